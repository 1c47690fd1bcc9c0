//! Events about pods as the kubelet writes them (core/v1 Events with source `kubelet` and the
//! node as host): Pulling, Pulled, Created, Started, Killing, BackOff, Failed; and about the node
//! itself (FreeDiskSpaceFailed, ImageGCFailed). A repeat of the same event for the same object
//! bumps its count instead of making a new one. Events are written in the background, as the
//! kubelet's event broadcaster does: a pod's start does not wait for the API to take its Pulled,
//! Created and Started events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event's identity for folding repeats: (object uid, field path, reason, message).
type EventKey = (String, String, String, String);

pub struct Recorder {
    client: Client,
    node: String,
    /// The events written so far → (event name, count).
    seen: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
}

impl Recorder {
    pub fn new(client: Client, node: String) -> Recorder {
        Recorder {
            client,
            node,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an event about `pod` (a container's when `container` is set), written in the
    /// background. Failures are logged: an event is never worth failing a pod for.
    pub async fn record(
        &self,
        pod: &Pod,
        container: Option<(&str, bool)>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let mut involved = json!({
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pod_name, "uid": uid,
        });
        if let Some((name, init)) = container {
            involved["fieldPath"] = json!(if init {
                format!("spec.initContainers{{{name}}}")
            } else {
                format!("spec.containers{{{name}}}")
            });
        }
        self.emit(&ns, involved, kind, reason, message);
    }

    /// Records an event about the node itself, as the kubelet's node reference names it (kind
    /// Node, the node's name as its uid too, which `kubectl describe node` looks for), in the
    /// default namespace; written in the background.
    pub fn record_node(&self, kind: EventType, reason: &str, message: &str) {
        let involved = json!({"kind": "Node", "name": self.node, "uid": self.node});
        self.emit("default", involved, kind, reason, message);
    }

    /// Writes an event about `involved` (its name and uid set, a field path maybe) in `ns`, or
    /// bumps the count of the same one written before.
    fn emit(&self, ns: &str, involved: Value, kind: EventType, reason: &str, message: &str) {
        let text = |field: &str| involved[field].as_str().unwrap_or_default().to_string();
        let key = (
            text("uid"),
            text("fieldPath"),
            reason.to_string(),
            message.to_string(),
        );
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let now = Utc::now();
        let seen = self.seen.clone();
        let repeat = {
            let mut seen = self.seen.lock().expect("event cache");
            match seen.get_mut(&key) {
                Some((name, count)) => {
                    *count += 1;
                    Some((name.clone(), *count))
                }
                None => None,
            }
        };
        let name = format!(
            "{}.{:x}",
            text("name"),
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": if kind == EventType::Normal { "Normal" } else { "Warning" },
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }))
        .expect("an Event literal");
        tokio::spawn(write(api, seen, key, repeat, event));
    }

    /// Forgets the events of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .expect("event cache")
            .retain(|k, _| k.0 != uid);
    }
}

/// Writes one event: bumps the count of the earlier one like it (`repeat`: its name and the
/// new count), or creates `event`.
async fn write(
    api: Api<Event>,
    seen: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
    key: EventKey,
    repeat: Option<(String, i32)>,
    event: Event,
) {
    let now = event.last_timestamp.clone();
    if let Some((name, count)) = repeat {
        let patched = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"count": count, "lastTimestamp": now})),
            )
            .await;
        if patched.is_ok() {
            return;
        }
    }
    let name = event.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {
            seen.lock().expect("event cache").insert(key, (name, 1));
        }
        Err(e) => tracing::warn!(
            object = ?event.involved_object.name,
            reason = ?event.reason,
            "event not recorded: {e}"
        ),
    }
}
