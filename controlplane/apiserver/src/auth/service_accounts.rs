//! What every namespace holds for its pods' credentials: the `default` ServiceAccount (the job
//! of kube-controller-manager's serviceaccount controller) and the `kube-root-ca.crt` ConfigMap
//! with the cluster CA (its root-ca-cert-publisher). Run inside the API server, which holds the
//! CA, from a watch on the store: a new namespace gets both, and either one deleted or changed
//! is made again. Terminating namespaces are left alone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::ApiServer;
use crate::handlers::WriteOptions;
use crate::object::{decode_kv, meta_str};
use crate::resources;
use crate::status::{ApiError, Reason};

pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

fn ignore_exists(r: Result<(), ApiError>) -> Result<(), ApiError> {
    match r {
        Err(e) if matches!(e.reason, Reason::AlreadyExists | Reason::Conflict) => Ok(()),
        // A namespace that began terminating meanwhile.
        Err(e) if e.reason == Reason::Forbidden || e.reason == Reason::NotFound => Ok(()),
        other => other,
    }
}

/// Makes the ServiceAccount and the ConfigMap of `ns` exist, the ConfigMap holding `ca_pem`.
async fn reconcile_namespace(app: &ApiServer, ns: &str, ca_pem: &str) -> Result<(), ApiError> {
    let opts = WriteOptions::default();
    let sa = resources::find("", "v1", "serviceaccounts").expect("served");
    if app
        .store
        .get(&sa.key(Some(ns), DEFAULT_SERVICE_ACCOUNT))
        .await?
        .is_none()
    {
        let obj = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": ns}});
        ignore_exists(app.create(sa, Some(ns), obj, &opts).await.map(drop))?;
    }
    let cm = resources::find("", "v1", "configmaps").expect("served");
    let want = json!({"ca.crt": ca_pem});
    match app.store.get(&cm.key(Some(ns), ROOT_CA_CONFIGMAP)).await? {
        None => {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                    "annotations": {"kubernetes.io/description": DESCRIPTION}},
                "data": want});
            ignore_exists(app.create(cm, Some(ns), obj, &opts).await.map(drop))?;
        }
        Some(kv) => {
            let cur = decode_kv(&kv)?;
            if cur.get("data") != Some(&want) {
                let mut new = cur.clone();
                new["data"] = want;
                let r = app
                    .update(cm, Some(ns), ROOT_CA_CONFIGMAP, new, None, &opts)
                    .await;
                ignore_exists(r.map(drop))?;
            }
        }
    }
    Ok(())
}

async fn reconcile(app: &ApiServer, ca_pem: &str) -> Result<(), ApiError> {
    let nsr = resources::find("", "v1", "namespaces").expect("served");
    let all = app.store.range(&nsr.prefix(None), None, 0).await?;
    for kv in &all.kvs {
        let o: Value = decode_kv(kv)?;
        if o.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        if let Some(ns) = meta_str(&o, "name") {
            reconcile_namespace(app, ns, ca_pem).await?;
        }
    }
    Ok(())
}

/// Whether a change of `key` may call for work: any namespace, or one of the two objects.
fn concerns(key: &str) -> bool {
    key.starts_with("/registry/namespaces/")
        || key.ends_with(&format!("/{DEFAULT_SERVICE_ACCOUNT}"))
            && key.starts_with("/registry/serviceaccounts/")
        || key.ends_with(&format!("/{ROOT_CA_CONFIGMAP}"))
            && key.starts_with("/registry/configmaps/")
}

/// Reconciles every namespace now, then after every change that concerns them.
pub async fn start(app: Arc<ApiServer>, ca_pem: String) -> Result<(), ApiError> {
    let from = app.store.current_revision().await?;
    reconcile(&app, &ca_pem).await?;
    let changed = Arc::new(Notify::new());
    for prefix in [
        "/registry/namespaces/",
        "/registry/serviceaccounts/",
        "/registry/configmaps/",
    ] {
        let (app, changed) = (app.clone(), changed.clone());
        tokio::spawn(async move {
            let mut after = from;
            loop {
                if let Ok(mut events) = app.store.watch(prefix, after).await {
                    while let Some(Ok(ev)) = events.next().await {
                        after = ev.revision();
                        if concerns(&ev.kv.key) {
                            changed.notify_one();
                        }
                    }
                }
                // The history is gone or the watch ended: look at everything again.
                if let Ok(rev) = app.store.current_revision().await {
                    after = rev;
                }
                changed.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            if let Err(e) = reconcile(&app, &ca_pem).await {
                tracing::warn!(error = %e.message, "service accounts and root CA of namespaces");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_two_objects_and_namespaces_concern_it() {
        assert!(super::concerns("/registry/namespaces/x"));
        assert!(super::concerns("/registry/serviceaccounts/x/default"));
        assert!(super::concerns("/registry/configmaps/x/kube-root-ca.crt"));
        assert!(!super::concerns("/registry/configmaps/x/other"));
        assert!(!super::concerns("/registry/serviceaccounts/x/builder"));
    }
}
