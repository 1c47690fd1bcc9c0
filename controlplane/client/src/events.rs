//! Events as kube-controller-manager records them: core/v1 Events with `source.component` set to
//! the controller, one per distinct (object, type, reason, message); a repeat bumps `count` and
//! `lastTimestamp` of the same Event (client-go's event correlator), so "Created pod: A" and
//! "Created pod: B" stay two events. (kube-rs' recorder folds every event of one reason into a
//! series that keeps the first message, which loses exactly what these events are for.)

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Mutex;

/// How many distinct events each recorder remembers.
const CACHE_SIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    name: String,
    type_: &'static str,
    reason: String,
    message: String,
}

pub struct Recorder {
    client: Client,
    component: String,
    /// The Event already written for each key: (namespace, name, count).
    seen: Mutex<HashMap<Key, (String, String, i32)>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Self {
        Recorder {
            client,
            component: component.into(),
            seen: Mutex::default(),
        }
    }

    /// Records `ev` about `regarding`.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let type_ = match ev.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            type_,
            reason: ev.reason.clone(),
            message: ev.note.clone().unwrap_or_default(),
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let known = self.seen.lock().await.get(&key).cloned();
        if let Some((ns, name, count)) = known {
            let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"count": count + 1, "lastTimestamp": stamp});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen.lock().await.insert(key, (ns, name, count + 1));
                    return Ok(());
                }
                // Deleted meanwhile (events expire): write a new one.
                Err(e) if crate::is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let ns = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = format!("{}.{:x}", key.name, now.as_nanosecond());
        let event: CoreEvent = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": regarding,
            "reason": ev.reason,
            "message": key.message,
            "type": type_,
            "action": ev.action,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": "",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }))
        .expect("a well-formed event");
        Api::<CoreEvent>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await?;
        let mut seen = self.seen.lock().await;
        // Bounded like client-go's cache: forgetting only costs a fresh Event for a repeat.
        if seen.len() >= CACHE_SIZE {
            seen.clear();
        }
        seen.insert(key, (ns, name, 1));
        Ok(())
    }
}
