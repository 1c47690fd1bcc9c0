//! ServiceAccount admission of a new pod, as kube-apiserver's: unless the pod or its service
//! account sets `automountServiceAccountToken: false` (or a container already mounts something
//! there), the pod gets a `kube-api-access-<x>` projected volume — a bound token (an hour, the
//! kubelet refreshes it), the cluster CA from `kube-root-ca.crt` and the namespace — mounted
//! read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every container. Mirror pods
//! are left alone.

use serde_json::{Value, json};

use super::node::MIRROR_ANNOTATION;
use super::service_accounts::{DEFAULT_SERVICE_ACCOUNT, ROOT_CA_CONFIGMAP};
use crate::ApiServer;
use crate::object::{decode_kv, meta_str};
use crate::resources;
use crate::status::{ApiError, ApiResult};

const POD_SCHEMA: &str = "io.k8s.api.core.v1.Pod";
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// kube-apiserver's: an hour and a little, so the kubelet's refresh at 80% is visible.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

fn projected_volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

/// Adds the service-account volume and mounts to `pod` where they belong.
pub async fn admit_pod(api: &ApiServer, pod: &mut Value) -> ApiResult<()> {
    if pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .is_some()
    {
        return Ok(());
    }
    let spec = &pod["spec"];
    let sa = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_string();
    let automount = match spec["automountServiceAccountToken"].as_bool() {
        Some(b) => b,
        None => {
            let ns = meta_str(pod, "namespace").unwrap_or_default();
            let r = resources::find("", "v1", "serviceaccounts").expect("served");
            match api.store.get(&r.key(Some(ns), &sa)).await? {
                Some(kv) => decode_kv(&kv)?["automountServiceAccountToken"]
                    .as_bool()
                    .unwrap_or(true),
                None => true,
            }
        }
    };
    let kinds = ["initContainers", "containers"];
    let already_mounted = kinds.iter().any(|k| {
        spec[*k].as_array().into_iter().flatten().any(|c| {
            c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH)
            })
        })
    });
    if !automount || already_mounted {
        return Ok(());
    }
    let name = format!("kube-api-access-{}", crate::handlers::random_suffix());
    let spec = &mut pod["spec"];
    match spec["volumes"].as_array_mut() {
        Some(vs) => vs.push(projected_volume(&name)),
        None => spec["volumes"] = json!([projected_volume(&name)]),
    }
    let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
    for k in kinds {
        for c in spec[k].as_array_mut().into_iter().flatten() {
            match c["volumeMounts"].as_array_mut() {
                Some(ms) => ms.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
        }
    }
    // In the form the API writes it (as the request was before admission), so that an update
    // sending it back changes nothing.
    *pod = resources::normalize(POD_SCHEMA, pod.take()).map_err(ApiError::internal)?;
    Ok(())
}
