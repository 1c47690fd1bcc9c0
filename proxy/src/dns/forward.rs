//! Names outside the cluster: asked of the upstream resolvers over UDP (TCP when the answer comes
//! back truncated), answers kept in a small cache bounded in entries, negative answers cached
//! for the SOA minimum (RFC 2308).
//!
//! Written on hickory-proto's message codec rather than hickory-resolver: the resolver would
//! bring its own cache, retries and system configuration, where this only needs one exchange
//! per miss and a cache whose entries are the upstream's sections as they came.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tracing::debug;

/// The UDP payload size offered upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;
/// The longest a forwarded answer is kept, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 300;
/// Upstream exchanges in flight at once; past this a miss is answered SERVFAIL at once, so a
/// flood of uncached names cannot hold a socket each until the upstream timeout.
const MAX_IN_FLIGHT: usize = 512;

/// An upstream's answer: the response code and the records of each section.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Whether it came from the cache.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("{MAX_IN_FLIGHT} upstream exchanges already in flight")]
    Busy,
    #[error("no upstream resolver answered {name} {qtype}: {last}")]
    Unanswered {
        name: Name,
        qtype: RecordType,
        last: String,
    },
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<Cache>,
    in_flight: Semaphore,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, cache_entries: usize) -> Self {
        Self {
            upstreams,
            timeout,
            cache: Mutex::new(Cache::new(cache_entries)),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The answer to `name` `qtype`, from the cache or the first upstream that answers.
    pub async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Forwarded, ForwardError> {
        let key = (LowerName::new(name), qtype);
        if let Some(hit) = self.cache.lock().expect("dns cache lock").get(&key) {
            return Ok(hit);
        }
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(ForwardError::Busy);
        };
        let mut last = String::new();
        for upstream in &self.upstreams {
            match tokio::time::timeout(self.timeout, exchange(*upstream, name, qtype)).await {
                Ok(Ok(response)) => {
                    let answer = Forwarded {
                        code: response.metadata.response_code,
                        answers: response.answers,
                        authorities: response.authorities,
                        cached: false,
                    };
                    self.cache
                        .lock()
                        .expect("dns cache lock")
                        .insert(key, &answer);
                    return Ok(answer);
                }
                Ok(Err(error)) => last = format!("{upstream}: {error}"),
                Err(_) => last = format!("{upstream}: no answer within {:?}", self.timeout),
            }
            debug!(%name, %qtype, error = %last, "upstream exchange failed");
        }
        Err(ForwardError::Unanswered {
            name: name.clone(),
            qtype,
            last,
        })
    }
}

/// One query to one upstream: UDP from a fresh socket (a random source port per query against
/// spoofed answers), again over TCP when the answer is truncated.
async fn exchange(
    upstream: SocketAddr,
    name: &Name,
    qtype: RecordType,
) -> std::io::Result<Message> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(std::io::Error::other)?;

    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; usize::from(UPSTREAM_PAYLOAD).max(4096)];
    let response = loop {
        let len = socket.recv(&mut buf).await?;
        // A datagram that is not the answer to this query is ignored, not trusted.
        match Message::from_vec(&buf[..len]) {
            Ok(m) if answers(&m, &query) => break m,
            _ => continue,
        }
    };
    if !response.metadata.truncation {
        return Ok(response);
    }

    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let response = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if !answers(&response, &query) {
        return Err(std::io::Error::other("TCP answer does not match the query"));
    }
    Ok(response)
}

/// Whether `response` answers `query` (same id, a response, the same question).
fn answers(response: &Message, query: &Message) -> bool {
    response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && response.queries.len() == 1
        && response.queries[0].query_type() == query.queries[0].query_type()
        && response.queries[0].name() == query.queries[0].name()
}

/// Forwarded answers by question, each with the instant it expires.
struct Cache {
    capacity: usize,
    entries: HashMap<(LowerName, RecordType), Entry>,
}

struct Entry {
    answer: Forwarded,
    stored: Instant,
    expires: Instant,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// A live entry, its TTLs lowered by the time it has spent in the cache.
    fn get(&mut self, key: &(LowerName, RecordType)) -> Option<Forwarded> {
        let now = Instant::now();
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.entries.remove(key);
            return None;
        }
        let age = now.duration_since(entry.stored).as_secs() as u32;
        let mut answer = entry.answer.clone();
        for record in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(age);
        }
        answer.cached = true;
        Some(answer)
    }

    fn insert(&mut self, key: (LowerName, RecordType), answer: &Forwarded) {
        let Some(ttl) = cache_ttl(answer) else { return };
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                // Still full of live entries: drop any one (the map's order is arbitrary).
                if let Some(victim) = self.entries.keys().next().cloned() {
                    self.entries.remove(&victim);
                }
            }
        }
        let entry = Entry {
            answer: answer.clone(),
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        };
        self.entries.insert(key, entry);
    }
}

/// How long an answer may be cached: the smallest answer TTL for a positive answer, the SOA's
/// negative TTL (min of its TTL and MINIMUM) for NXDOMAIN or no data; failures are not cached.
fn cache_ttl(answer: &Forwarded) -> Option<u32> {
    let ttl = match answer.code {
        ResponseCode::NoError if !answer.answers.is_empty() => {
            answer.answers.iter().map(|r| r.ttl).min()?
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            answer.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
        }
        _ => return None,
    };
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use std::str::FromStr;

    fn a(name: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        )
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_str("example.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        )
    }

    fn forwarded(code: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Forwarded {
        Forwarded {
            code,
            answers,
            authorities,
            cached: false,
        }
    }

    #[test]
    fn positive_ttl_is_the_smallest_answer_ttl_capped() {
        let f = forwarded(
            ResponseCode::NoError,
            vec![a("a.example.", 60), a("a.example.", 30)],
            vec![],
        );
        assert_eq!(cache_ttl(&f), Some(30));
        let f = forwarded(ResponseCode::NoError, vec![a("a.example.", 86400)], vec![]);
        assert_eq!(cache_ttl(&f), Some(MAX_CACHE_TTL));
    }

    #[test]
    fn negative_ttl_is_the_soa_minimum() {
        let f = forwarded(ResponseCode::NXDomain, vec![], vec![soa(3600, 20)]);
        assert_eq!(cache_ttl(&f), Some(20));
        let f = forwarded(ResponseCode::NoError, vec![], vec![soa(10, 20)]);
        assert_eq!(cache_ttl(&f), Some(10));
        // Without an SOA there is nothing to say how long the name stays absent.
        let f = forwarded(ResponseCode::NXDomain, vec![], vec![]);
        assert_eq!(cache_ttl(&f), None);
        let f = forwarded(ResponseCode::ServFail, vec![], vec![soa(10, 20)]);
        assert_eq!(cache_ttl(&f), None);
    }

    #[test]
    fn cache_is_bounded_and_serves_hits() {
        let mut cache = Cache::new(2);
        for i in 0..5 {
            let name = format!("n{i}.example.");
            let key = (LowerName::from_str(&name).unwrap(), RecordType::A);
            cache.insert(
                key,
                &forwarded(ResponseCode::NoError, vec![a(&name, 60)], vec![]),
            );
        }
        assert_eq!(cache.entries.len(), 2);
        let key = (LowerName::from_str("n4.example.").unwrap(), RecordType::A);
        let hit = cache.get(&key).expect("the newest entry is kept");
        assert!(hit.cached);
        assert_eq!(hit.answers[0].ttl, 60);
    }
}
