//! Which requests are long-running: watches, followed logs, exec, attach, port-forward and the
//! node proxy. Request timeouts and in-flight limits must leave these alone (kube-apiserver's
//! `--long-running-request-regexp` and `LongRunningFunc`), so this is the one place that says so.

use std::collections::HashMap;

use crate::node_proxy::{NodeRequest, PodSubresource};

/// Whether the request at `path` with `query` may stay open for as long as the client wants.
pub fn is_long_running(path: &str, query: &HashMap<String, String>) -> bool {
    let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
    if flag("watch") || path.contains("/watch/") {
        return true;
    }
    match NodeRequest::parse(path) {
        Some(NodeRequest::Pod { sub, .. }) => sub != PodSubresource::Log || flag("follow"),
        Some(NodeRequest::NodeProxy { .. }) => true,
        None => false,
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
        let pods = "/api/v1/namespaces/default/pods";
        assert!(is_long_running(pods, &q(&[("watch", "true")])));
        assert!(!is_long_running(pods, &q(&[])));
        assert!(!is_long_running(&format!("{pods}/web/log"), &q(&[])));
        assert!(is_long_running(
            &format!("{pods}/web/log"),
            &q(&[("follow", "true")])
        ));
        for sub in ["exec", "attach", "portforward"] {
            assert!(is_long_running(&format!("{pods}/web/{sub}"), &q(&[])));
        }
        assert!(is_long_running(
            "/api/v1/nodes/n1/proxy/stats/summary",
            &q(&[])
        ));
    }
}
