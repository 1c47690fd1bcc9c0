//! `skiff bench --mode rbac`: what authorization costs. One server, one run: get and list
//! latency of ConfigMaps as the administrator (`system:masters`, let through before any binding
//! is looked at — the open behaviour from before RBAC) and as a user whom RBAC authorizes
//! through a RoleBinding found after `bindings` others, side by side, alternating rounds so
//! that drift affects both alike.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use super::api::{BenchError, Row, concurrently, configmap, namespace, row, with_server};

#[derive(Debug, Clone)]
pub struct RbacBenchConfig {
    /// RoleBindings (of other users) the authorizer has to pass over.
    pub bindings: usize,
    /// ConfigMaps in the namespace, listed whole.
    pub objects: usize,
    pub concurrency: usize,
    /// Rounds of (administrator, user) measurements.
    pub rounds: usize,
}

fn binding(name: String, user: &str, role: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            namespace: None,
        }]),
    }
}

const NS: &str = "bench-rbac";
const USER: &str = "bench-viewer";

async fn gets_and_lists(
    who: &str,
    client: &Client,
    cfg: &RbacBenchConfig,
) -> Result<Vec<Row>, BenchError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let n = cfg.objects;
    let gets = 2000;
    let a = api.clone();
    let (lat, wall) = concurrently(gets, cfg.concurrency, move |i| {
        let a = a.clone();
        async move {
            a.get(&format!("cm-{:06}", (i * 7919) % n)).await?;
            Ok(())
        }
    })
    .await?;
    let mut rows = vec![row(
        format!("get as {who} ({} clients)", cfg.concurrency),
        lat,
        wall,
    )];
    let a = api.clone();
    let (lat, wall) = concurrently(50, 1, move |_| {
        let a = a.clone();
        async move {
            let l = a.list(&ListParams::default().labels("bench")).await?;
            if l.items.len() != n {
                return Err(BenchError::Setup(format!(
                    "listed {} of {n}",
                    l.items.len()
                )));
            }
            Ok(())
        }
    })
    .await?;
    rows.push(row(format!("list {n} as {who}"), lat, wall));
    Ok(rows)
}

async fn measure(
    admin: Client,
    dir: std::path::PathBuf,
    cfg: &RbacBenchConfig,
) -> Result<Vec<Row>, BenchError> {
    namespace(&admin, NS).await?;
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let (lat, wall) = concurrently(cfg.bindings, cfg.concurrency, {
        let rbs = rbs.clone();
        move |i| {
            let rbs = rbs.clone();
            async move {
                let b = binding(format!("other-{i:05}"), &format!("user-{i}"), "view");
                rbs.create(&PostParams::default(), &b).await?;
                Ok(())
            }
        }
    })
    .await?;
    let mut rows = vec![row(
        format!("create {} RoleBindings", cfg.bindings),
        lat,
        wall,
    )];
    // Named to sort last: the authorizer passes over every other binding first.
    rbs.create(
        &PostParams::default(),
        &binding("zz-bench-viewer".into(), USER, "view"),
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    concurrently(cfg.objects, cfg.concurrency, move |i| {
        let cms = cms.clone();
        async move {
            cms.create(&PostParams::default(), &configmap(format!("cm-{i:06}")))
                .await?;
            Ok(())
        }
    })
    .await?;
    let kubeconfig = dir.join("bench-viewer.kubeconfig");
    let text = skiff_apiserver::pki::Pki::new(&dir)
        .user_kubeconfig(USER, &[], None)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    std::fs::write(&kubeconfig, text).map_err(|e| BenchError::Setup(e.to_string()))?;
    let user = skiff_client::client(&kubeconfig)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    // The binding reaches the authorizer through a watch.
    let probe: Api<ConfigMap> = Api::namespaced(user.clone(), NS);
    let mut tries = 0;
    while probe.get("cm-000000").await.is_err() {
        tries += 1;
        if tries > 100 {
            return Err(BenchError::Setup("the user was never authorized".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut per_op: Vec<(String, Vec<Row>)> = Vec::new();
    for _ in 0..cfg.rounds {
        for (who, client) in [("admin (no RBAC)", &admin), ("RBAC user", &user)] {
            for r in gets_and_lists(who, client, cfg).await? {
                match per_op.iter_mut().find(|(op, _)| *op == r.operation) {
                    Some((_, rs)) => rs.push(r),
                    None => per_op.push((r.operation.clone(), vec![r])),
                }
            }
        }
    }
    // The median round of each.
    for (_, mut rs) in per_op {
        rs.sort_by_key(|r| r.p50);
        rows.push(rs.swap_remove(rs.len() / 2));
    }
    Ok(rows)
}

pub async fn run(cfg: &RbacBenchConfig) -> Result<Vec<Row>, BenchError> {
    let cfg = Arc::new(cfg.clone());
    with_server(None, move |admin, dir| async move {
        measure(admin, dir, &cfg).await
    })
    .await
}
