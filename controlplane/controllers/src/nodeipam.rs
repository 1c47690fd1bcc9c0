//! Node IPAM: gives every node without one a `/24` pod range (`spec.podCIDR`/`podCIDRs`) from the
//! cluster CIDR — the lowest range no live node holds, so a deleted node's range is reused.
//! Allocations are serialised so that two nodes registering together never share a range.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use super::{ControllerError, drive};

/// The cluster CIDR (a /16) carved into /24s.
#[derive(Debug, Clone, Copy)]
pub struct ClusterCidr {
    base: [u8; 2],
}

impl Default for ClusterCidr {
    fn default() -> Self {
        ClusterCidr { base: [10, 244] }
    }
}

impl ClusterCidr {
    /// Parses `A.B.0.0/16`.
    pub fn parse(s: &str) -> Result<Self, ControllerError> {
        let bad = || ControllerError::Invalid(format!("cluster CIDR {s}: expected an IPv4 /16"));
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if len != "16" {
            return Err(bad());
        }
        let o = ip.octets();
        Ok(ClusterCidr { base: [o[0], o[1]] })
    }

    fn range(&self, i: u8) -> String {
        format!("{}.{}.{i}.0/24", self.base[0], self.base[1])
    }

    fn index_of(&self, cidr: &str) -> Option<u8> {
        let ip: Ipv4Addr = cidr.split_once('/')?.0.parse().ok()?;
        let o = ip.octets();
        ([o[0], o[1]] == self.base).then_some(o[2])
    }
}

impl std::fmt::Display for ClusterCidr {
    /// `A.B.0.0/16`, as parsed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.0.0/16", self.base[0], self.base[1])
    }
}

struct Ipam {
    client: Client,
    cidr: ClusterCidr,
    lock: Mutex<()>,
}

pub async fn run(client: Client, cidr: ClusterCidr) {
    let ctx = Arc::new(Ipam {
        client: client.clone(),
        cidr,
        lock: Mutex::new(()),
    });
    let stream = Controller::new(Api::<Node>::all(client), watcher::Config::default()).run(
        reconcile,
        |_, _, _| Action::requeue(std::time::Duration::from_secs(1)),
        ctx,
    );
    drive("nodeipam", stream).await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ipam>) -> Result<Action, ControllerError> {
    let has = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if has || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _guard = ctx.lock.lock().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    // The cached copy may predate an allocation this controller just made: ask again.
    let Some(fresh) = api.get_opt(&node.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if fresh
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::await_change());
    }
    let used: HashSet<u8> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| {
            n.spec
                .as_ref()?
                .pod_cidr
                .as_deref()
                .and_then(|c| ctx.cidr.index_of(c))
        })
        .collect();
    let Some(free) = (0..=255u8).find(|i| !used.contains(i)) else {
        tracing::warn!(node = %node.name_any(), "cluster CIDR exhausted");
        return Ok(Action::requeue(std::time::Duration::from_secs(30)));
    };
    let range = ctx.cidr.range(free);
    let patch = json!({"spec": {"podCIDR": range, "podCIDRs": [range]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(node = %node.name_any(), %range, "allocated pod CIDR");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let c = ClusterCidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(c.range(3), "10.244.3.0/24");
        assert_eq!(c.index_of("10.244.7.0/24"), Some(7));
        assert_eq!(c.index_of("10.245.7.0/24"), None);
        assert!(ClusterCidr::parse("10.244.0.0/8").is_err());
    }
}
