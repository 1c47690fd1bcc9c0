//! `/configz`: the kubelet's configuration as the real kubelet answers it, a
//! `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1` field names) under `kubeletconfig`,
//! made once at start from the flags the kubelet runs with.

use std::time::Duration;

use serde_json::{Value, json};

use crate::pod_worker::KubeletConfig;

/// The `/configz` document of a kubelet running with `config`, serving on `port`.
pub fn document(config: &KubeletConfig, port: u16, max_pods: u32) -> Value {
    json!({
        "kubeletconfig": {
            "enableServer": true,
            "address": config.node_ip.to_string(),
            "port": port,
            "staticPodPath": config.pod_manifest_path.as_ref().map(|p| p.display().to_string()),
            "syncFrequency": go_duration(config.volume_sync_period),
            "podLogsDir": config.pod_logs_dir.display().to_string(),
            "rootDir": config.root_dir.display().to_string(),
            "cgroupRoot": config.cgroup_root,
            "cgroupsPerQOS": true,
            "cgroupDriver": "cgroupfs",
            "clusterDNS": config.cluster_dns.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "clusterDomain": config.cluster_domain,
            "maxPods": max_pods,
            "containerLogMaxSize": format!("{}", config.container_log_max_size),
            "imageGCHighThresholdPercent": config.image_gc.high_threshold_percent,
            "imageGCLowThresholdPercent": config.image_gc.low_threshold_percent,
            "imageMinimumGCAge": go_duration(config.image_gc.min_age),
            "authentication": {
                "anonymous": {"enabled": false},
                "x509": {},
                "webhook": {"enabled": false},
            },
            "authorization": {"mode": "AlwaysAllow"},
        }
    })
}

/// A duration as Go's `time.Duration.String()` writes whole seconds (`1m0s`, `45s`).
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, secs) => format!("{secs}s"),
        (0, m, secs) => format!("{m}m{secs}s"),
        (h, m, secs) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_writes_them() {
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }
}
