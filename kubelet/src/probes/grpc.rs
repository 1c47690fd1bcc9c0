//! The gRPC probe: `grpc.health.v1.Health/Check` over HTTP/2 (plaintext, as the kubelet does),
//! with the request and the answer encoded by hand — one string field out, one enum field back.

use hyper::Request;
use hyper::body::Bytes;

use super::http::{Endpoint, Full, USER_AGENT, post_h2};

/// The longest service name sent (keeps the message's length in one varint byte).
const MAX_SERVICE: usize = 120;

/// `HealthCheckRequest { service }` in a gRPC length-prefixed frame.
fn request_frame(service: &str) -> Result<Vec<u8>, String> {
    if service.len() > MAX_SERVICE {
        return Err(format!("grpc.service longer than {MAX_SERVICE} bytes"));
    }
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Ok(frame)
}

/// The `status` of a `HealthCheckResponse` frame (0 when absent, as protobuf's default).
fn response_status(frame: &[u8]) -> Result<u64, String> {
    let bad = || "malformed health check response".to_string();
    if frame.len() < 5 || frame[0] != 0 {
        return Err(bad());
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let mut msg = frame.get(5..5 + len).ok_or_else(bad)?;
    let mut status = 0;
    while let Some((&tag, rest)) = msg.split_first() {
        let (value, rest) = varint(rest).ok_or_else(bad)?;
        match tag & 7 {
            0 => {
                if tag >> 3 == 1 {
                    status = value;
                }
                msg = rest;
            }
            2 => msg = rest.get(value as usize..).ok_or_else(bad)?,
            _ => return Err(bad()),
        }
    }
    Ok(status)
}

fn varint(mut b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v, b));
        }
    }
    None
}

fn status_name(s: u64) -> &'static str {
    match s {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// Ok when the service answers SERVING; otherwise the kubelet's message.
pub async fn check(to: &Endpoint, service: &str) -> Result<(), String> {
    let req = Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        to.authority()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("user-agent", USER_AGENT)
    .body(Full::new(Bytes::from(request_frame(service)?)))
    .map_err(|e| e.to_string())?;
    let reply = post_h2(to, req).await.map_err(|e| {
        format!(
            "failed to connect service {:?} within 1s: {e}",
            to.authority()
        )
    })?;
    let grpc_status = reply
        .trailers
        .get("grpc-status")
        .or_else(|| reply.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    if grpc_status != "0" {
        let message = reply
            .trailers
            .get("grpc-message")
            .or_else(|| reply.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(format!(
            "health rpc probe failed: rpc error: code = {grpc_status} desc = {message}"
        ));
    }
    match response_status(&reply.body)? {
        1 => Ok(()),
        s => Err(format!(
            "service unhealthy (responded with {:?})",
            status_name(s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(request_frame("").unwrap(), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            request_frame("ab").unwrap(),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert!(request_frame(&"x".repeat(200)).is_err());
        assert_eq!(response_status(&[0, 0, 0, 0, 2, 0x08, 1]).unwrap(), 1);
        assert_eq!(response_status(&[0, 0, 0, 0, 0]).unwrap(), 0);
        assert!(response_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
    }

    /// A real HTTP/2 server on loopback answering the health check.
    #[tokio::test]
    async fn health_check_over_http2() {
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let serving = req.uri().path() == "/grpc.health.v1.Health/Check";
                    let body: &'static [u8] = if serving {
                        &[0, 0, 0, 0, 2, 0x08, 2]
                    } else {
                        &[]
                    };
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0")
                            .body(Full::new(Bytes::from_static(body)))
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        let to = Endpoint {
            host: "127.0.0.1".to_string(),
            port,
        };
        let err = check(&to, "").await.unwrap_err();
        assert!(err.contains("NOT_SERVING"), "{err}");
        let closed = Endpoint {
            host: "127.0.0.1".to_string(),
            port: 1,
        };
        assert!(check(&closed, "").await.is_err());
    }
}
