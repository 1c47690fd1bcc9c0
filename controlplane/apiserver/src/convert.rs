//! Conversion between the versions a stored object is served as. Events are stored once, in the
//! core/v1 form, and served as both `v1` Events and `events.k8s.io/v1` Events, as the real API
//! server does, so events recorded through either API show in `kubectl get events` and
//! `kubectl describe`.

use serde_json::{Map, Value, json};

/// (events.k8s.io/v1 field, core/v1 field)
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename(o: Value, to_core: bool, api_version: &str) -> Value {
    let Value::Object(m) = o else { return o };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = EVENT_FIELDS.iter().find_map(|(new, core)| {
            if to_core && k == *new {
                Some(*core)
            } else if !to_core && k == *core {
                Some(*new)
            } else {
                None
            }
        });
        out.insert(renamed.map_or(k, str::to_string), v);
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event in its stored, core/v1 form.
pub fn event_to_core(o: Value) -> Value {
    rename(o, true, "v1")
}

/// A stored (core/v1) Event as events.k8s.io/v1 serves it.
pub fn event_from_core(o: Value) -> Value {
    rename(o, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn events_round_trip_between_versions() {
        let r = find("events.k8s.io", "v1", "events").unwrap();
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hi", "reason": "Started",
            "reportingController": "skiff-kubelet", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = r.strategy.stored_form(new.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "skiff-kubelet");
        assert_eq!(r.strategy.served_form(core), new);
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.strategy.stored_form(json!({"a": 1})), json!({"a": 1}));
    }
}
