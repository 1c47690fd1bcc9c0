//! Runs one probe or hook action once: exec through the runtime, httpGet, tcpSocket, grpc.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::grpc;
use super::http::{self, Endpoint};
use crate::runtime::{ExecResult, Runtime};

/// How one run of a probe went; a failure carries the kubelet's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// What a probe or a hook does.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Exec(&'a ExecAction),
    HttpGet(&'a HTTPGetAction),
    TcpSocket(&'a TCPSocketAction),
    Grpc(&'a GRPCAction),
}

impl<'a> Action<'a> {
    pub fn of_probe(p: &'a Probe) -> Option<Action<'a>> {
        if let Some(a) = &p.exec {
            Some(Action::Exec(a))
        } else if let Some(a) = &p.http_get {
            Some(Action::HttpGet(a))
        } else if let Some(a) = &p.tcp_socket {
            Some(Action::TcpSocket(a))
        } else {
            p.grpc.as_ref().map(Action::Grpc)
        }
    }
}

/// The container an action is aimed at.
pub struct Target<'a> {
    pub runtime: &'a Runtime,
    pub container_id: &'a str,
    pub container: &'a Container,
    /// The pod's IP: the default host of network actions.
    pub pod_ip: &'a str,
}

/// A port by number or by the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("port {s:?} not found in the container's ports"))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

fn endpoint(host: Option<&str>, port: u16, t: &Target) -> Endpoint {
    Endpoint {
        host: host
            .filter(|h| !h.is_empty())
            .unwrap_or(t.pod_ip)
            .to_string(),
        port,
    }
}

/// Runs the action once, giving up after `timeout` (an exec'd command is killed then).
pub async fn run(action: Action<'_>, t: &Target<'_>, timeout: Duration) -> Outcome {
    let result = match action {
        // The runtime keeps the time itself: it must kill the command, not just stop waiting.
        Action::Exec(a) => exec(a, t, timeout).await,
        _ => tokio::time::timeout(timeout, run_network(action, t))
            .await
            .unwrap_or_else(|_| Err(format!("timeout after {}s", timeout.as_secs()))),
    };
    match result {
        Ok(()) => Outcome::Success,
        Err(message) => Outcome::Failure(message),
    }
}

async fn exec(a: &ExecAction, t: &Target<'_>, timeout: Duration) -> Result<(), String> {
    let command = a.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err("exec: empty command".to_string());
    }
    let result = t
        .runtime
        .exec(t.container_id, &command, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let (code, output) = match result {
        ExecResult::Exited(code, output) => (code, output),
        ExecResult::TimedOut => {
            return Err(format!("command timed out after {}s", timeout.as_secs()));
        }
    };
    if code == 0 {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output).trim().to_string();
    Err(if text.is_empty() {
        format!("command {command:?} exited with {code}")
    } else {
        text
    })
}

/// The actions that reach the container over the network.
async fn run_network(action: Action<'_>, t: &Target<'_>) -> Result<(), String> {
    match action {
        Action::Exec(_) => Err("exec runs in the container, not over the network".to_string()),
        Action::HttpGet(a) => {
            let port = resolve_port(&a.port, t.container)?;
            let to = endpoint(a.host.as_deref(), port, t);
            let https = a
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            let headers: Vec<(String, String)> = a
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            let code = http::get(https, &to, a.path.as_deref().unwrap_or("/"), &headers).await?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Action::TcpSocket(a) => {
            let port = resolve_port(&a.port, t.container)?;
            endpoint(a.host.as_deref(), port, t).dial().await.map(drop)
        }
        Action::Grpc(a) => {
            let port = u16::try_from(a.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port number: {}", a.port))?;
            grpc::check(&endpoint(None, port, t), a.service.as_deref().unwrap_or("")).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn ports_by_number_or_name() {
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("web".to_string()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("web".to_string()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("81".to_string()), &c),
            Ok(81)
        );
        assert!(resolve_port(&IntOrString::String("db".to_string()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }
}
