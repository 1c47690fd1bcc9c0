//! The DNS protocol side: hickory-server parses requests and writes responses on TCP, and
//! [`super::udp`] on UDP; [`Handler`] answers each request from the cluster index, or through
//! the forwarder for names outside the cluster.
//!
//! hickory-server answers undecodable requests with FORMERR itself and drops those shorter than
//! a header; everything that reaches the handler is checked here (one question, class IN,
//! opcode QUERY, EDNS version 0) and answered with an error code otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, warn};

use super::metrics::Source;
use super::records::{Answer, Lookup};
use super::{DnsError, Shared};

/// Idle time after which a TCP client's connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The largest UDP response sent, whatever the client's EDNS buffer size claims; larger answers
/// are truncated and the client retries over TCP.
const MAX_UDP_PAYLOAD: u16 = 4096;

/// The request handler called for every decoded request.
#[derive(Clone)]
pub struct Handler {
    pub(super) shared: Arc<Shared>,
}

/// A response ready to send: header fields and the records of each section.
struct Response<'a> {
    code: ResponseCode,
    authoritative: bool,
    answers: &'a [Record],
    authorities: &'a [Record],
    additionals: &'a [Record],
    source: Source,
}

impl Response<'static> {
    fn error(code: ResponseCode) -> Self {
        Response {
            code,
            authoritative: false,
            answers: &[],
            authorities: &[],
            additionals: &[],
            source: Source::None,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let (info, source) = self.respond(request, response_handle).await;
        let tcp = request.protocol() == Protocol::Tcp;
        self.shared
            .metrics
            .record(tcp, info.response_code, source, start.elapsed());
        info
    }
}

/// The error code a request that cannot be answered gets, or None when it can be.
fn refusal(request: &Request) -> Option<ResponseCode> {
    if request.metadata.op_code != OpCode::Query {
        return Some(ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Some(ResponseCode::BADVERS);
    }
    let queries = request.queries.queries();
    if queries.len() != 1 {
        return Some(ResponseCode::FormErr);
    }
    let query = &queries[0];
    if query.query_class() != DNSClass::IN {
        return Some(ResponseCode::Refused);
    }
    if matches!(
        query.query_type(),
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT
    ) {
        return Some(ResponseCode::Refused);
    }
    None
}

impl Handler {
    /// Answers `request` through `response_handle`: what was sent and where the answer came
    /// from (the caller counts it).
    pub(super) async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> (ResponseInfo, Source) {
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });
        if let Some(code) = refusal(request) {
            let response = Response::error(code);
            return send(request, edns.as_ref(), response_handle, response).await;
        }
        self.answer(request, edns.as_ref(), response_handle).await
    }

    async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        response_handle: R,
    ) -> (ResponseInfo, Source) {
        let query = &request.queries.queries()[0];
        let qtype = query.query_type();
        let index = self.shared.index();
        match index.lookup(query.name(), qtype) {
            Lookup::Authoritative(answer) if answer.chase.is_some() => {
                let records = self.chase(&index, &answer, qtype).await;
                let response = Response {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: &records,
                    authorities: &[],
                    additionals: &[],
                    source: Source::Cluster,
                };
                send(request, edns, response_handle, response).await
            }
            Lookup::Authoritative(answer) => {
                let response = Response {
                    code: answer.code,
                    authoritative: true,
                    answers: &answer.answers,
                    authorities: answer.soa.map(std::slice::from_ref).unwrap_or_default(),
                    additionals: answer.additionals,
                    source: Source::Cluster,
                };
                send(request, edns, response_handle, response).await
            }
            Lookup::Outside => {
                let name = Name::from(query.name());
                match self.shared.forwarder.resolve(&name, qtype).await {
                    Ok(forwarded) => {
                        let response = Response {
                            code: forwarded.code,
                            authoritative: false,
                            answers: &forwarded.answers,
                            authorities: &forwarded.authorities,
                            additionals: &[],
                            source: if forwarded.cached {
                                Source::Cache
                            } else {
                                Source::Upstream
                            },
                        };
                        send(request, edns, response_handle, response).await
                    }
                    Err(error) => {
                        debug!(%error, "forwarding failed");
                        self.shared.metrics.upstream_error();
                        let mut response = Response::error(ResponseCode::ServFail);
                        response.source = Source::Upstream;
                        send(request, edns, response_handle, response).await
                    }
                }
            }
        }
    }

    /// An ExternalName's CNAME followed by its target's records, so a stub resolver that does
    /// not follow CNAMEs itself still gets addresses. One step only: the target is either a
    /// cluster name (no further CNAME chasing) or resolved by the upstream, which follows
    /// its own chains.
    async fn chase(
        &self,
        index: &super::records::ClusterIndex,
        answer: &Answer<'_>,
        qtype: RecordType,
    ) -> Vec<Record> {
        let mut records = answer.answers.to_vec();
        let Some(target) = answer.chase else {
            return records;
        };
        match index.lookup(&target.into(), qtype) {
            Lookup::Authoritative(found) if found.chase.is_none() => {
                records.extend(found.answers.iter().cloned());
            }
            Lookup::Authoritative(_) => {}
            Lookup::Outside => match self.shared.forwarder.resolve(target, qtype).await {
                Ok(forwarded) if forwarded.code == ResponseCode::NoError => {
                    records.extend(forwarded.answers);
                }
                Ok(_) => {}
                Err(error) => {
                    debug!(%error, "resolving an ExternalName target failed");
                    self.shared.metrics.upstream_error();
                }
            },
        }
        records
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    edns: Option<&Edns>,
    mut response_handle: R,
    response: Response<'_>,
) -> (ResponseInfo, Source) {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = response.authoritative;
    metadata.recursion_available = true;
    metadata.response_code = response.code;
    // Extended response codes (BADVERS) carry their high bits in the OPT record.
    let mut extended: Edns;
    let mut edns = edns;
    if let (true, Some(e)) = (response.code.high() != 0, edns) {
        extended = e.clone();
        extended.set_rcode_high(response.code.high());
        edns = Some(&extended);
    }
    let message = MessageResponseBuilder::new(&request.queries, edns).build(
        metadata,
        response.answers.iter(),
        response.authorities.iter(),
        std::iter::empty(),
        response.additionals.iter(),
    );
    let info = match response_handle.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "failed to send a DNS response");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    };
    (info, response.source)
}

/// The DNS server bound to its UDP sockets and TCP listener.
pub struct Listening {
    /// hickory-server, serving TCP.
    tcp_server: Server<Handler>,
    udp_sockets: Vec<UdpSocket>,
    handler: Handler,
    /// The UDP address actually bound (a port 0 request gets a real port).
    pub udp: SocketAddr,
    /// The TCP address actually bound.
    pub tcp: SocketAddr,
}

impl Listening {
    pub(super) async fn bind(addr: SocketAddr, handler: Handler) -> Result<Self, DnsError> {
        let bind_error = |source| DnsError::Bind { addr, source };
        // One UDP socket per core on the same address (SO_REUSEPORT): the kernel spreads
        // clients over them and each has its own receive loop, as unbound does per thread.
        let sockets = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let first = reuseport_udp(addr).map_err(bind_error)?;
        let udp_addr = first.local_addr().map_err(bind_error)?;
        let mut udp_sockets = vec![first];
        for _ in 1..sockets {
            udp_sockets.push(reuseport_udp(udp_addr).map_err(bind_error)?);
        }
        // With port 0 the TCP listener takes the port UDP got, so one address serves both.
        let tcp = TcpListener::bind(udp_addr).await.map_err(bind_error)?;
        let tcp_addr = tcp.local_addr().map_err(bind_error)?;
        let mut tcp_server = Server::new(handler.clone());
        tcp_server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        Ok(Self {
            tcp_server,
            udp_sockets,
            handler,
            udp: udp_addr,
            tcp: tcp_addr,
        })
    }

    /// Serves until a socket fails.
    pub async fn run(mut self) -> Result<(), DnsError> {
        let mut udp = tokio::task::JoinSet::new();
        for socket in self.udp_sockets {
            udp.spawn(super::udp::serve(socket, self.handler.clone()));
        }
        tokio::select! {
            done = self.tcp_server.block_until_done() => {
                done.map_err(|e| DnsError::Serve(e.to_string()))
            }
            Some(done) = udp.join_next() => {
                let error = match done {
                    Ok(Ok(())) => "UDP socket closed".to_string(),
                    Ok(Err(e)) => format!("UDP: {e}"),
                    Err(e) => format!("UDP: {e}"),
                };
                Err(DnsError::Serve(error))
            }
        }
    }
}

/// A non-blocking UDP socket bound to `addr` with SO_REUSEPORT set.
fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Datagram, flags, None)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}
