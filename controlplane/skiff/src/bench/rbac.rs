//! `skiff bench --mode rbac`: what authorization costs. One server, one run: get and list
//! latency of ConfigMaps as the administrator (`system:masters`, let through before any binding
//! is looked at — the open behaviour from before RBAC) and as a user whom RBAC authorizes
//! through a RoleBinding among `bindings` others, side by side, in short rounds that alternate
//! which goes first.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use super::api::{BenchError, Row, concurrently, configmap, namespace, row, with_server};

#[derive(Debug, Clone)]
pub struct RbacBenchConfig {
    /// RoleBindings of other users in the namespace.
    pub bindings: usize,
    /// ConfigMaps in the namespace, listed whole.
    pub objects: usize,
    pub concurrency: usize,
    /// Rounds of (administrator, user) measurements, each of 400 gets and 10 lists.
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

/// What one contender measured, over every round.
#[derive(Default)]
struct Samples {
    gets: Vec<Duration>,
    get_wall: Duration,
    lists: Vec<Duration>,
    list_wall: Duration,
}

/// One round of one contender: concurrent gets, then sequential lists of the whole namespace.
async fn round(
    client: &Client,
    cfg: &RbacBenchConfig,
    into: &mut Samples,
) -> Result<(), BenchError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let n = cfg.objects;
    let a = api.clone();
    let (lat, wall) = concurrently(GETS_PER_ROUND, cfg.concurrency, move |i| {
        let a = a.clone();
        async move {
            a.get(&format!("cm-{:06}", (i * 7919) % n)).await?;
            Ok(())
        }
    })
    .await?;
    into.gets.extend(lat);
    into.get_wall += wall;
    let (lat, wall) = concurrently(LISTS_PER_ROUND, 1, move |_| {
        let a = api.clone();
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
    into.lists.extend(lat);
    into.list_wall += wall;
    Ok(())
}

const GETS_PER_ROUND: usize = 400;
const LISTS_PER_ROUND: usize = 10;

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
    // Named to sort last: an authorizer scanning the bindings in order would pass over every
    // other one first.
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
    // Short rounds, alternating which goes first, so that the load of the machine and the
    // server's warm-up fall on both alike; each row pools all rounds of one contender.
    let contenders = [("admin (no RBAC)", &admin), ("RBAC user", &user)];
    // A round of each, not counted, opens both clients' connections.
    for (_, client) in contenders {
        round(client, cfg, &mut Samples::default()).await?;
    }
    let mut samples = [Samples::default(), Samples::default()];
    for r in 0..cfg.rounds {
        for i in [r % 2, 1 - r % 2] {
            round(contenders[i].1, cfg, &mut samples[i]).await?;
        }
    }
    for ((who, _), s) in contenders.iter().zip(samples) {
        rows.push(row(
            format!("get as {who} ({} clients)", cfg.concurrency),
            s.gets,
            s.get_wall,
        ));
        rows.push(row(
            format!("list {} as {who}", cfg.objects),
            s.lists,
            s.list_wall,
        ));
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

/// The table, and how much slower the RBAC user's median requests are than the administrator's.
pub fn render(rows: &[Row]) -> String {
    let mut out = super::api::render(rows);
    let p50 = |op: &str, who: &str| {
        rows.iter()
            .find(|r| r.operation.starts_with(op) && r.operation.contains(who))
            .map(|r| r.p50.as_secs_f64())
    };
    for op in ["get", "list"] {
        if let (Some(admin), Some(user)) = (p50(op, "admin"), p50(op, "RBAC user")) {
            out.push_str(&format!(
                "{op} p50 with RBAC: {:+.1}%\n",
                (user / admin - 1.0) * 100.0
            ));
        }
    }
    out
}
