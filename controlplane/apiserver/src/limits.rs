//! What keeps one client from taking the server down, as kube-apiserver bounds it: the size of a
//! request body, the time a TLS handshake, a request's headers and a whole request may take, and
//! the requests in flight — read-only and mutating counted apart, each pool shared fairly between
//! users (round robin over per-user queues, in the spirit of API Priority and Fairness).
//! Long-running requests (watches and the streaming pod subresources) are exempt from the
//! request timeout and the in-flight limits, as kube-apiserver exempts them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::status::ApiError;

/// The largest request body accepted (kube-apiserver's `MaxRequestBodyBytes`).
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The server's bounds, from its flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Read-only requests in flight (`--max-requests-inflight`).
    pub max_requests_inflight: usize,
    /// Mutating requests in flight (`--max-mutating-requests-inflight`).
    pub max_mutating_requests_inflight: usize,
    /// The longest a non-streaming request may take (`--request-timeout`); `?timeout=` may
    /// shorten it.
    pub request_timeout: Duration,
    /// The longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// The longest a client may take to send a request's headers (HTTP/1.1); also how long an
    /// idle keep-alive connection is kept.
    pub request_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads a request body of at most [`MAX_REQUEST_BODY_BYTES`]; 413 past it, before more than
/// the limit is held in memory.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("limit is {MAX_REQUEST_BODY_BYTES}"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > MAX_REQUEST_BODY_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The bounds every request passes through: the in-flight pools and the request timeout.
pub struct RequestBounds {
    limits: Limits,
    flow: FlowControl,
}

/// A request let in: its seat (none for long-running requests) and its deadline.
pub struct Admitted {
    _seat: Option<Seat>,
    timeout: Option<Duration>,
}

impl RequestBounds {
    pub fn new(limits: Limits) -> Self {
        let flow = FlowControl::new(&limits);
        Self { limits, flow }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Lets a request of `user` in, or answers why not (400 for a bad `timeout`, 429).
    pub async fn admit(
        &self,
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        user: &str,
    ) -> Result<Admitted, ApiError> {
        if is_long_running(path, query) {
            return Ok(Admitted {
                _seat: None,
                timeout: None,
            });
        }
        let timeout = request_timeout(query, self.limits.request_timeout)?;
        let seat = self.flow.admit(method, user).await?;
        Ok(Admitted {
            _seat: Some(seat),
            timeout: Some(timeout),
        })
    }
}

impl Admitted {
    /// Serves the request within its deadline (504 past it), holding the seat until then.
    pub async fn run(self, serve: impl Future<Output = Response>) -> Response {
        match self.timeout {
            None => serve.await,
            Some(t) => match tokio::time::timeout(t, serve).await {
                Ok(resp) => resp,
                Err(_) => ApiError::timeout(
                    format!("request did not complete within the allotted timeout of {t:?}"),
                    1,
                )
                .into_response(),
            },
        }
    }
}

/// Whether a request lasts as long as the client wants: a watch, or a pod's log, exec, attach,
/// port-forward or proxy stream.
pub fn is_long_running(path: &str, query: &HashMap<String, String>) -> bool {
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        return true;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let watch_path = match segs.first() {
        Some(&"api") => segs.get(2) == Some(&"watch"),
        Some(&"apis") => segs.get(3) == Some(&"watch"),
        _ => false,
    };
    // The streaming subresources of pods, services and nodes (proxy takes a path after it).
    let streaming = match segs.as_slice() {
        ["api", "v1", "namespaces", _, "pods", _, sub, ..] => {
            matches!(*sub, "log" | "exec" | "attach" | "portforward" | "proxy")
        }
        ["api", "v1", "namespaces", _, "services", _, "proxy", ..]
        | ["api", "v1", "nodes", _, "proxy", ..] => true,
        _ => false,
    };
    watch_path || streaming
}

/// The time a request may take: `?timeout=` (a Go duration such as `30s` or `1m30s`) when it
/// is shorter than the server's limit, the limit otherwise.
pub fn request_timeout(
    query: &HashMap<String, String>,
    max: Duration,
) -> Result<Duration, ApiError> {
    match query.get("timeout").filter(|t| !t.is_empty()) {
        None => Ok(max),
        Some(t) => match parse_go_duration(t) {
            Some(d) if d > Duration::ZERO => Ok(d.min(max)),
            _ => Err(ApiError::bad_request(format!(
                "invalid timeout {t:?}: expected a duration such as 30s or 1m"
            ))),
        },
    }
}

/// Parses a Go `time.Duration` (`300ms`, `1.5h`, `2h45m`); `None` when malformed or negative.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// How many seats one user may wait for in a pool, beyond those in flight.
fn max_queued_per_user(limit: usize) -> usize {
    (limit / 4).max(1)
}

/// How long a queued request waits for a seat before it is told to come back.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The in-flight limits: a pool of seats for read-only requests and one for mutating ones.
pub struct FlowControl {
    read: Arc<Pool>,
    mutating: Arc<Pool>,
}

impl FlowControl {
    pub fn new(limits: &Limits) -> Self {
        Self {
            read: Pool::new("read-only", limits.max_requests_inflight),
            mutating: Pool::new("mutating", limits.max_mutating_requests_inflight),
        }
    }

    /// A seat for one request of `user`; the seat is given back when dropped. Fails with 429
    /// when the user's queue is full or no seat came free in time.
    pub async fn admit(&self, method: &Method, user: &str) -> Result<Seat, ApiError> {
        let pool = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            &self.read
        } else {
            &self.mutating
        };
        pool.acquire(user).await
    }
}

struct PoolState {
    in_flight: usize,
    /// Per user, the requests waiting for a seat, oldest first.
    queues: HashMap<String, VecDeque<oneshot::Sender<Seat>>>,
    /// Users with waiting requests, in the order they are next served.
    turn: VecDeque<String>,
}

struct Pool {
    kind: &'static str,
    limit: usize,
    state: Mutex<PoolState>,
}

/// A request's place in a pool; dropping it hands the place to the next waiting user.
pub struct Seat {
    pool: Arc<Pool>,
    held: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.held {
            self.pool.release();
        }
    }
}

impl Pool {
    fn new(kind: &'static str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            kind,
            limit: limit.max(1),
            state: Mutex::new(PoolState {
                in_flight: 0,
                queues: HashMap::new(),
                turn: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere cannot leave the counters half-updated: each update is one statement.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self, why: &str) -> ApiError {
        ApiError::too_many_requests(
            format!(
                "Too many requests: {why}, please try again later ({} requests in flight at most)",
                self.kind
            ),
            1,
        )
    }

    async fn acquire(self: &Arc<Self>, user: &str) -> Result<Seat, ApiError> {
        let waiting = {
            let mut st = self.lock();
            if st.in_flight < self.limit {
                st.in_flight += 1;
                return Ok(Seat {
                    pool: self.clone(),
                    held: true,
                });
            }
            let queue = st.queues.entry(user.to_string()).or_default();
            if queue.len() >= max_queued_per_user(self.limit) {
                return Err(self.busy("this user's queue is full"));
            }
            let (tx, rx) = oneshot::channel();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.turn.push_back(user.to_string());
            }
            rx
        };
        // A seat handed over after the wait gave up is dropped with the channel: given back.
        match tokio::time::timeout(QUEUE_WAIT, waiting).await {
            Ok(Ok(seat)) => Ok(seat),
            _ => Err(self.busy("no seat came free in time")),
        }
    }

    /// Hands a freed seat to the user whose turn it is, or returns it to the pool.
    fn release(self: &Arc<Self>) {
        let mut st = self.lock();
        while let Some(user) = st.turn.pop_front() {
            let Some(queue) = st.queues.get_mut(&user) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                st.queues.remove(&user);
            } else {
                st.turn.push_back(user);
            }
            let Some(tx) = next else { continue };
            let seat = Seat {
                pool: self.clone(),
                held: true,
            };
            match tx.send(seat) {
                Ok(()) => return,
                // That request stopped waiting: the next one gets the seat.
                Err(mut seat) => seat.held = false,
            }
        }
        st.in_flight -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn long_running_requests() {
        let none = HashMap::new();
        assert!(is_long_running("/api/v1/pods", &q(&[("watch", "true")])));
        assert!(is_long_running("/api/v1/watch/pods", &none));
        assert!(is_long_running("/apis/apps/v1/watch/deployments", &none));
        assert!(is_long_running("/api/v1/namespaces/d/pods/p/log", &none));
        assert!(is_long_running("/api/v1/namespaces/d/pods/p/exec", &none));
        assert!(is_long_running(
            "/api/v1/namespaces/d/pods/p/portforward",
            &none
        ));
        assert!(!is_long_running("/api/v1/namespaces/d/pods/p", &none));
        assert!(!is_long_running("/apis/apps/v1/deployments", &none));
        // A pod named "log" is not its log.
        assert!(!is_long_running("/api/v1/namespaces/d/pods", &none));
    }

    #[test]
    fn timeouts() {
        let max = Duration::from_secs(60);
        assert_eq!(request_timeout(&HashMap::new(), max).unwrap(), max);
        assert_eq!(
            request_timeout(&q(&[("timeout", "1m30s")]), max).unwrap(),
            max
        );
        assert_eq!(
            request_timeout(&q(&[("timeout", "1.5s")]), max).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            request_timeout(&q(&[("timeout", "250ms")]), max).unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["x", "10", "-1s", "1y", "0", "s"] {
            assert!(
                request_timeout(&q(&[("timeout", bad)]), max).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_past_its_timeout_gets_504_and_a_long_running_one_none() {
        let bounds = RequestBounds::new(Limits::default());
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "done".into_response()
        };
        let admitted = bounds
            .admit(
                &Method::GET,
                "/api/v1/pods",
                &q(&[("timeout", "50ms")]),
                "u",
            )
            .await
            .unwrap();
        let resp = admitted.run(slow()).await;
        assert_eq!(resp.status().as_u16(), 504);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let admitted = bounds
            .admit(
                &Method::GET,
                "/api/v1/pods",
                &q(&[("watch", "1"), ("timeout", "50ms")]),
                "u",
            )
            .await
            .unwrap();
        assert!(admitted.timeout.is_none() && admitted._seat.is_none());
    }

    #[tokio::test]
    async fn a_full_pool_answers_429_with_retry_after() {
        let bounds = RequestBounds::new(Limits {
            max_mutating_requests_inflight: 1,
            ..Limits::default()
        });
        let none = HashMap::new();
        let _held = bounds
            .admit(&Method::POST, "/api/v1/pods", &none, "a")
            .await
            .unwrap();
        // "a" may queue one request; the next is refused at once.
        let pool = bounds.flow.mutating.clone();
        let waiter = tokio::spawn(async move { pool.acquire("a").await.map(drop) });
        tokio::task::yield_now().await;
        let e = match bounds
            .admit(&Method::POST, "/api/v1/pods", &none, "a")
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("admitted past the limit"),
        };
        let resp = e.into_response();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        // Reads have their own pool.
        assert!(
            bounds
                .admit(&Method::GET, "/api/v1/pods", &none, "a")
                .await
                .is_ok()
        );
        waiter.abort();
    }

    #[tokio::test]
    async fn a_flooding_user_does_not_starve_another() {
        let pool = Pool::new("mutating", 2);
        // The flood holds both seats and fills its queue.
        let a1 = pool.acquire("flood").await.unwrap();
        let a2 = pool.acquire("flood").await.unwrap();
        let queued_flood = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("flood").await.map(drop) }
        });
        tokio::task::yield_now().await;
        let e = pool.acquire("flood").await.err().expect("queue full");
        assert_eq!(e.code(), 429);
        // The other user queues behind the flood's waiter, and is served on the next turn even
        // though the flood keeps asking.
        let other = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("other").await.map(drop) }
        });
        tokio::task::yield_now().await;
        drop(a1);
        queued_flood.await.unwrap().unwrap();
        drop(a2);
        other.await.unwrap().unwrap();
        assert_eq!(pool.lock().in_flight, 0);
    }
}
