//! Pod priority, as the real API server's Priority admission plugin: a new pod's
//! `spec.priority` and `spec.preemptionPolicy` come from its PriorityClass (or the global
//! default class; without one, 0 and PreemptLowerPriority); a class that does not exist, or a
//! pod that states a different value, is refused; updates keep what creation set. At most one
//! class is the global default. The built-in system classes exist from the start.

use serde_json::{Value, json};

use super::ApiServer;
use super::object::{decode_kv, meta_str};
use super::resources;
use super::status::{ApiError, ApiResult};

/// The classes every cluster has: name, value, description.
pub const SYSTEM_CLASSES: [(&str, i32, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The largest value a class that is not a system class may have.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

fn classes() -> &'static resources::ResourceInfo {
    resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are served")
}

/// Keeps the priority fields creation set when an update leaves them out.
pub fn keep_pod_priority(cur: &Value, new: &mut Value) {
    for f in ["priority", "preemptionPolicy"] {
        if let (Some(v), Some(spec)) = (
            cur.pointer(&format!("/spec/{f}")),
            new.get_mut("spec").and_then(Value::as_object_mut),
        ) && !spec.contains_key(f)
        {
            spec.insert(f.into(), v.clone());
        }
    }
}

impl ApiServer {
    async fn priority_classes(&self) -> ApiResult<Vec<Value>> {
        let all = self.store.range(&classes().prefix(None), None, 0).await?;
        all.kvs.iter().map(decode_kv).collect()
    }

    /// Sets a new pod's priority and preemption policy from its PriorityClass.
    pub async fn admit_pod_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let name = meta_str(pod, "name").unwrap_or_default().to_string();
        let forbidden =
            |why: String| ApiError::forbidden(format!("pods \"{name}\" is forbidden: {why}"));
        let wanted = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let class = if wanted.is_empty() {
            self.priority_classes()
                .await?
                .into_iter()
                .find(|c| c["globalDefault"] == json!(true))
        } else {
            match self.store.get(&classes().key(None, &wanted)).await? {
                Some(kv) => Some(decode_kv(&kv)?),
                None => {
                    return Err(forbidden(format!(
                        "no PriorityClass with name {wanted} was found"
                    )));
                }
            }
        };
        let (class_name, value, policy) = match &class {
            Some(c) => (
                meta_str(c, "name").unwrap_or_default(),
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].as_str(),
            ),
            None => ("", 0, Some("PreemptLowerPriority")),
        };
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        if let Some(given) = spec.get("priority").and_then(Value::as_i64)
            && given != value
        {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        if let Some(policy) = policy {
            if let Some(given) = spec.get("preemptionPolicy").and_then(Value::as_str)
                && given != policy
            {
                return Err(forbidden(format!(
                    "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
                )));
            }
            spec.insert("preemptionPolicy".into(), json!(policy));
        }
        if !class_name.is_empty() {
            spec.insert("priorityClassName".into(), json!(class_name));
        }
        spec.insert("priority".into(), json!(value));
        Ok(())
    }

    /// Refuses a second global default class.
    pub async fn admit_priority_class(&self, class: &Value) -> ApiResult<()> {
        if class["globalDefault"] != json!(true) {
            return Ok(());
        }
        let name = meta_str(class, "name").unwrap_or_default();
        for other in self.priority_classes().await? {
            let other_name = meta_str(&other, "name").unwrap_or_default();
            if other_name != name && other["globalDefault"] == json!(true) {
                return Err(ApiError::forbidden(format!(
                    "priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: PriorityClass {other_name} is already marked as default. Only one default can exist"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_what_creation_resolved() {
        let cur =
            json!({"spec": {"priority": 1000, "preemptionPolicy": "Never", "containers": []}});
        let mut new = json!({"spec": {"containers": []}});
        keep_pod_priority(&cur, &mut new);
        assert_eq!(new["spec"]["priority"], 1000);
        assert_eq!(new["spec"]["preemptionPolicy"], "Never");
        // A value the update states is left for validation to judge.
        let mut changed = json!({"spec": {"priority": 5, "containers": []}});
        keep_pod_priority(&cur, &mut changed);
        assert_eq!(changed["spec"]["priority"], 5);
    }
}
