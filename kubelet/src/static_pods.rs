//! Static pods: pods the node runs from manifest files in `--pod-manifest-path` (YAML or JSON,
//! one Pod each), and their mirror pods — read-only copies in the API, annotated
//! `kubernetes.io/config.mirror` and owned by the Node, so that the cluster sees them. A static
//! pod's uid is the hash of its file and the node: a changed file is a new pod (the old one is
//! stopped, the new one started, the mirror replaced); a removed file stops the pod and removes
//! its mirror. A mirror deleted through the API is made again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// The annotation naming where a pod came from (`file` for static pods; `api` otherwise).
pub const SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// The annotation holding a static pod's hash (its uid on the node).
pub const HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The annotation that marks a mirror pod, holding its static pod's hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Manifests larger than this are refused (a pod spec is a few kilobytes).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether the pod came from a manifest file rather than the API.
pub fn is_static(pod: &Pod) -> bool {
    annotation(pod, SOURCE_ANNOTATION).is_some_and(|s| s != "api")
}

/// Whether the pod is a static pod's mirror in the API (the kubelet does not run it).
pub fn is_mirror(pod: &Pod) -> bool {
    annotation(pod, MIRROR_ANNOTATION).is_some()
}

/// Whether `mirror` is the mirror of the static pod `uid`.
pub fn mirrors(mirror: &Pod, uid: &str) -> bool {
    annotation(mirror, MIRROR_ANNOTATION) == Some(uid)
}

/// The static pods of the manifest directory, each as the node runs it: named
/// `<name>-<node>`, in its namespace (default: `default`), bound to the node, its uid the
/// manifest's hash. Files that cannot be read or are not a Pod are skipped with a warning.
pub fn read_dir(dir: &Path, node_name: &str) -> Vec<Pod> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("reading the pod manifest directory {}: {e}", dir.display());
            return vec![];
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| match read_manifest(&path, node_name) {
            Ok(pod) => Some(pod),
            Err(e) => {
                tracing::warn!("static pod manifest {}: {e}", path.display());
                None
            }
        })
        .collect()
}

/// One manifest as its static pod.
fn read_manifest(path: &Path, node_name: &str) -> Result<Pod, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(format!("{size} bytes, more than {MAX_MANIFEST_BYTES}"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    if value["kind"] != "Pod" {
        return Err(format!("kind {} is not Pod", value["kind"]));
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| format!("not a Pod: {e}"))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    let mut hasher = Sha256::new();
    hasher.update(node_name.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update([0]);
    hasher.update(text.as_bytes());
    let digest = hasher.finalize();
    let uid: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let meta = &mut pod.metadata;
    meta.name = Some(format!("{name}-{node_name}"));
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_string());
    }
    meta.uid = Some(uid.clone());
    meta.resource_version = None;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(SOURCE_ANNOTATION.to_string(), "file".to_string());
    annotations.insert(HASH_ANNOTATION.to_string(), uid);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_string());
    pod.status = None;
    Ok(pod)
}

/// The mirror of a static pod: its metadata and spec, annotated as a mirror, owned by the node.
fn mirror_of(pod: &Pod, node: &Node) -> Pod {
    let mut mirror = pod.clone();
    let meta = &mut mirror.metadata;
    let uid = meta.uid.take().unwrap_or_default();
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_ANNOTATION.to_string(), uid);
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_string(),
        kind: "Node".to_string(),
        name: node.metadata.name.clone().unwrap_or_default(),
        uid: node.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    mirror
}

/// Makes the API hold the current mirror of `pod`: creates it when missing, replaces one of an
/// older version of the file, and removes one being deleted (it is made again on the next
/// pass). A pod of the same name that is no mirror is left alone. Returns whether a mirror was
/// made (its status is then still to be written).
pub async fn sync_mirror(client: &Client, pod: &Pod, node: &Node) -> bool {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&name).await {
        Ok(Some(existing)) => {
            if !is_mirror(&existing) {
                tracing::warn!(pod = %format!("{ns}/{name}"), "a pod that is no mirror has the static pod's name");
                return false;
            }
            if !mirrors(&existing, &uid) || existing.metadata.deletion_timestamp.is_some() {
                delete_mirror(client, &existing).await;
            }
            false
        }
        Ok(None) => match api
            .create(&PostParams::default(), &mirror_of(pod, node))
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), "mirror pod created");
                true
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), "creating the mirror pod: {e}");
                false
            }
        },
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), "reading the mirror pod: {e}");
            false
        }
    }
}

/// Removes a mirror pod at once (its containers are the static pod's, which the kubelet stops
/// itself).
pub async fn delete_mirror(client: &Client, mirror: &Pod) {
    let ns = mirror.metadata.namespace.clone().unwrap_or_default();
    let name = mirror.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: mirror.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "mirror pod removed"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), "removing the mirror pod: {e}"),
    }
}

/// Removes the mirror of the static pod `static_pod` (gone from the manifest directory), if
/// the API still holds it.
pub async fn remove_mirror_of(client: &Client, static_pod: &Pod) {
    let ns = static_pod.metadata.namespace.clone().unwrap_or_default();
    let name = static_pod.metadata.name.clone().unwrap_or_default();
    let uid = static_pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if let Ok(Some(mirror)) = api.get_opt(&name).await
        && mirrors(&mirror, &uid)
    {
        delete_mirror(client, &mirror).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_static_pods() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Service\n").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "kind: Pod\n").unwrap();
        let pods = read_dir(dir.path(), "n1");
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert!(is_static(p) && !is_mirror(p));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert_eq!(
            read_dir(dir.path(), "n1")[0].metadata.uid,
            Some(uid.clone())
        );
        assert_ne!(
            read_dir(dir.path(), "n2")[0].metadata.uid,
            Some(uid.clone())
        );

        let node: Node = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "n1", "uid": "node-uid"}}),
        )
        .unwrap();
        let m = mirror_of(p, &node);
        assert!(is_mirror(&m) && mirrors(&m, &uid));
        assert_eq!(m.metadata.uid, None);
        let owner = &m.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
    }
}
