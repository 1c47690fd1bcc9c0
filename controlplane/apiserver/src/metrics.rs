//! `metrics.k8s.io/v1beta1` — NodeMetrics and PodMetrics as metrics-server serves them, so that
//! `kubectl top nodes` and `kubectl top pods [--containers]` work with nothing installed. Every
//! node's kubelet is scraped (`/stats/summary`, through the node proxy's kubelet client) and the
//! answers kept in memory for [`SCRAPE_INTERVAL`]; a request after that scrapes again. (On
//! demand rather than on a timer as metrics-server does: a server whose nodes are not reachable
//! — the control plane's hollow-node tests — must not send them anything unasked.) Like
//! metrics-server, a node, pod or container whose CPU rate the kubelet has not measured yet (it
//! needs two samples) is left out, so the first `kubectl top` in a while finds no metrics yet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::status::{ApiError, ApiResult, Reason};
use crate::{ApiServer, resources};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const SCRAPE_INTERVAL: Duration = Duration::from_secs(10);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_SUMMARY: usize = 16 * 1024 * 1024;

/// The kubelets' last summaries, by node name, and when they were taken.
#[derive(Default)]
pub struct Scraped {
    last: RwLock<Option<(Instant, HashMap<String, Value>)>>,
}

/// A request under `/apis/metrics.k8s.io/v1beta1`.
#[derive(Debug, PartialEq, Eq)]
pub enum MetricsRequest {
    Nodes(Option<String>),
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
}

impl MetricsRequest {
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/apis/metrics.k8s.io/v1beta1/")?;
        let segs: Vec<&str> = rest.split('/').collect();
        let some = |s: &str| Some(s.to_string());
        Some(match segs.as_slice() {
            ["nodes"] => Self::Nodes(None),
            ["nodes", name] => Self::Nodes(some(name)),
            ["pods"] => Self::Pods {
                namespace: None,
                name: None,
            },
            ["namespaces", ns, "pods"] => Self::Pods {
                namespace: some(ns),
                name: None,
            },
            ["namespaces", ns, "pods", name] => Self::Pods {
                namespace: some(ns),
                name: some(name),
            },
            _ => return None,
        })
    }
}

/// The resources of the group, for discovery: (plural, singular, kind, namespaced).
pub const RESOURCES: [(&str, &str, &str, bool); 2] = [
    ("nodes", "", "NodeMetrics", false),
    ("pods", "", "PodMetrics", true),
];

async fn scrape(app: &ApiServer) -> HashMap<String, Value> {
    let nodes = resources::find("", "v1", "nodes").expect("served");
    let names: Vec<String> = match app.list(nodes, None, &HashMap::new()).await {
        Ok(list) => list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e.message, "metrics: listing nodes");
            return HashMap::new();
        }
    };
    let scrapes = names.into_iter().map(|name| async move {
        let got = tokio::time::timeout(
            SCRAPE_TIMEOUT,
            crate::node_proxy::kubelet_get(app, &name, "/stats/summary", MAX_SUMMARY),
        )
        .await;
        let summary = match got {
            Ok(Ok(body)) => serde_json::from_slice::<Value>(&body).ok(),
            Ok(Err(e)) => {
                tracing::debug!(node = %name, error = %e.message, "metrics: scraping");
                None
            }
            Err(_) => {
                tracing::debug!(node = %name, "metrics: scraping timed out");
                None
            }
        };
        (name, summary)
    });
    futures::future::join_all(scrapes)
        .await
        .into_iter()
        .filter_map(|(name, summary)| Some((name, summary?)))
        .collect()
}

/// `{"cpu": "Nn", "memory": "NKi"}` from a summary's `cpu` and `memory`; `None` without a rate.
fn usage(stats: &Value) -> Option<Value> {
    let cpu = stats["cpu"]["usageNanoCores"].as_u64()?;
    let memory = stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Some(json!({"cpu": format!("{cpu}n"), "memory": format!("{}Ki", memory / 1024)}))
}

fn timestamp(stats: &Value) -> Value {
    stats["cpu"]["time"].clone()
}

fn node_metrics(name: &str, summary: &Value) -> Option<Value> {
    let node = &summary["node"];
    Some(json!({
        "metadata": {"name": name, "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
        "timestamp": timestamp(node),
        "window": format!("{}s", SCRAPE_INTERVAL.as_secs()),
        "usage": usage(node)?,
    }))
}

fn pod_metrics(pod: &Value) -> Option<Value> {
    let containers: Vec<Value> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some(json!({"name": c["name"], "usage": usage(c)?})))
        .collect();
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": {
            "name": pod["podRef"]["name"],
            "namespace": pod["podRef"]["namespace"],
            "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        "timestamp": timestamp(pod),
        "window": format!("{}s", SCRAPE_INTERVAL.as_secs()),
        "containers": containers,
    }))
}

fn not_found(kind: &str, name: &str) -> ApiError {
    ApiError {
        reason: Reason::NotFound,
        message: format!("{kind}.metrics.k8s.io \"{name}\" not found"),
        details: Some(json!({"name": name, "group": GROUP, "kind": kind})),
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items})
}

fn item(kind: &str, mut v: Value) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    v
}

/// Answers a metrics request from the last scrape (scraping first if it is too old).
pub async fn serve(app: &ApiServer, request: MetricsRequest) -> Response {
    match answer(app, request).await {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn answer(app: &ApiServer, request: MetricsRequest) -> ApiResult<Value> {
    let fresh = |last: &Option<(Instant, HashMap<String, Value>)>| {
        last.as_ref()
            .is_some_and(|(at, _)| at.elapsed() < SCRAPE_INTERVAL)
    };
    if !fresh(&*app.metrics.last.read().await) {
        let mut last = app.metrics.last.write().await;
        // Another request may have scraped while this one waited for the lock.
        if !fresh(&last) {
            *last = Some((Instant::now(), scrape(app).await));
        }
    }
    let last = app.metrics.last.read().await;
    let summaries = &last.as_ref().expect("scraped above").1;
    match request {
        MetricsRequest::Nodes(None) => {
            let mut items: Vec<Value> = summaries
                .iter()
                .filter_map(|(name, s)| node_metrics(name, s))
                .collect();
            items.sort_by(|a, b| {
                a["metadata"]["name"]
                    .as_str()
                    .cmp(&b["metadata"]["name"].as_str())
            });
            Ok(list("NodeMetrics", items))
        }
        MetricsRequest::Nodes(Some(name)) => summaries
            .get(&name)
            .and_then(|s| node_metrics(&name, s))
            .map(|v| item("NodeMetrics", v))
            .ok_or_else(|| not_found("nodemetrics", &name)),
        MetricsRequest::Pods { namespace, name } => {
            let mut pods: Vec<Value> = summaries
                .values()
                .flat_map(|s| s["pods"].as_array().cloned().unwrap_or_default())
                .filter(|p| {
                    namespace
                        .as_deref()
                        .is_none_or(|ns| p["podRef"]["namespace"] == ns)
                        && name.as_deref().is_none_or(|n| p["podRef"]["name"] == n)
                })
                .filter_map(|p| pod_metrics(&p))
                .collect();
            pods.sort_by_key(|p| {
                (
                    p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            });
            match name {
                Some(name) => pods
                    .pop()
                    .map(|v| item("PodMetrics", v))
                    .ok_or_else(|| not_found("podmetrics", &name)),
                None => Ok(list("PodMetrics", pods)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            MetricsRequest::parse("/apis/metrics.k8s.io/v1beta1/nodes"),
            Some(MetricsRequest::Nodes(None))
        );
        assert_eq!(
            MetricsRequest::parse("/apis/metrics.k8s.io/v1beta1/namespaces/a/pods/b"),
            Some(MetricsRequest::Pods {
                namespace: Some("a".into()),
                name: Some("b".into())
            })
        );
        assert_eq!(
            MetricsRequest::parse("/apis/metrics.k8s.io/v1beta1/x"),
            None
        );
    }

    #[test]
    fn from_a_summary() {
        let summary = json!({
            "node": {"cpu": {"time": "t", "usageNanoCores": 5000}, "memory": {"workingSetBytes": 4096}},
            "pods": [{"podRef": {"name": "p", "namespace": "n"},
                "containers": [{"name": "c", "cpu": {"usageNanoCores": 7}, "memory": {"workingSetBytes": 2048}},
                               {"name": "new", "cpu": {}, "memory": {}}]}],
        });
        let node = node_metrics("n1", &summary).unwrap();
        assert_eq!(node["usage"], json!({"cpu": "5000n", "memory": "4Ki"}));
        let pod = pod_metrics(&summary["pods"][0]).unwrap();
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        assert_eq!(pod["containers"][0]["usage"]["memory"], "2Ki");
    }
}
