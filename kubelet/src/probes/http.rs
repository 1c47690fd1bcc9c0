//! The HTTP side of probes and hooks: a GET over HTTP/1.1 (HTTPS without verifying the
//! certificate, as the kubelet does) and a single-request HTTP/2 call for gRPC.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The User-Agent the kubelet's probes send.
pub const USER_AGENT: &str = "kube-probe/1.32";

/// A request body of one buffer.
pub struct Full(Option<Bytes>);

impl Full {
    pub fn new(data: impl Into<Bytes>) -> Full {
        Full(Some(data.into()))
    }
}

impl Body for Full {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(
            self.0
                .take()
                .filter(|b| !b.is_empty())
                .map(|b| Ok(Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_empty())
    }
}

/// Where a probe connects: the address, and the host name for TLS and the Host header.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The address to dial (the host resolved if it is a name).
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("lookup {}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("lookup {}: no address", self.host))
    }

    /// `host:port`, with an IPv6 host in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A TCP connection, with the error as Go's dialer words it (the kubelet's messages).
    pub async fn dial(&self) -> Result<TcpStream, String> {
        let addr = self.resolve().await?;
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: connect: {e}"))
    }
}

/// Accepts any server certificate: HTTPS probes do not verify, as in Kubernetes.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = NoVerification(provider.signature_verification_algorithms);
    let config = rustls::ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn send_http1<T>(io: T, req: Request<Full>) -> Result<Response<Incoming>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A GET of `path` with `headers` (a `Host` among them replaces the default); the status code.
pub async fn get(
    https: bool,
    to: &Endpoint,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let scheme = if https { "https" } else { "http" };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut req = Request::get(&path)
        .header("Host", to.authority())
        .header("User-Agent", USER_AGENT)
        .header("Accept", "*/*");
    for (name, value) in headers {
        let h = req.headers_mut().ok_or("invalid request")?;
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("httpHeaders {name:?}: {e}"))?;
        let value = hyper::header::HeaderValue::from_str(value)
            .map_err(|e| format!("httpHeaders {name:?}: {e}"))?;
        if name == hyper::header::HOST || name == hyper::header::USER_AGENT {
            h.insert(name, value);
        } else {
            h.append(name, value);
        }
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("{scheme}://{}{path}: {e}", to.authority()))?;
    let tcp = to.dial().await?;
    let resp = if https {
        let name = ServerName::try_from(to.host.clone()).map_err(|e| e.to_string())?;
        let tls = tls_connector()?
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", to.authority()))?;
        send_http1(tls, req).await
    } else {
        send_http1(tcp, req).await
    }
    .map_err(|e| format!("Get \"{scheme}://{}{path}\": {e}", to.authority()))?;
    Ok(resp.status().as_u16())
}

/// One HTTP/2 POST (gRPC): the response's status, headers, body and trailers.
pub struct H2Reply {
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: hyper::HeaderMap,
}

/// The most of a reply body read (a health answer is a few bytes).
const MAX_REPLY: usize = 64 * 1024;

pub async fn post_h2(to: &Endpoint, req: Request<Full>) -> Result<H2Reply, String> {
    let tcp = to.dial().await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    let mut reply = H2Reply {
        headers: parts.headers,
        body: Vec::new(),
        trailers: hyper::HeaderMap::new(),
    };
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| e.to_string())?;
        match frame.into_data() {
            Ok(data) => {
                if reply.body.len() + data.len() > MAX_REPLY {
                    return Err("reply too large".to_string());
                }
                reply.body.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    reply.trailers.extend(t);
                }
            }
        }
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::service_fn;
    use std::time::Duration;

    /// An HTTPS server with a self-signed certificate: the probe does not verify it, and sends
    /// its path and headers.
    #[tokio::test]
    async fn https_get_without_verification() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pod.invalid".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let ok = req.uri().path() == "/healthz"
                        && req.headers().get("x-probe").is_some_and(|v| v == "1")
                        && req
                            .headers()
                            .get("user-agent")
                            .is_some_and(|v| v == USER_AGENT);
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(if ok { 200 } else { 500 })
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc),
                );
            }
        });
        let to = Endpoint {
            host: "127.0.0.1".to_string(),
            port,
        };
        let header = [("X-Probe".to_string(), "1".to_string())];
        assert_eq!(get(true, &to, "healthz", &header).await, Ok(200));
        assert_eq!(get(true, &to, "/other", &header).await, Ok(500));
        // Plain HTTP against the TLS port fails rather than hangs.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), get(false, &to, "/", &[]))
                .await
                .is_ok_and(|r| r.is_err() || r == Ok(400))
        );
    }
}
