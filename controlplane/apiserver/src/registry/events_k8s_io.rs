//! Event (`events.k8s.io/v1`, `events`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "events.k8s.io",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    storage: "events",
    schema: "io.k8s.api.events.v1.Event",
    strategy: &EventsV1EventStrategy,
};

struct EventsV1EventStrategy;

impl Strategy for EventsV1EventStrategy {
    /// Stored once with the core/v1 Events.
    fn stored_form(&self, o: Value) -> Value {
        crate::convert::event_to_core(o)
    }

    fn served_form(&self, o: Value) -> Value {
        crate::convert::event_from_core(o)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        super::events::SELECTABLE_FIELDS
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            (
                "Last Seen",
                "string",
                0,
                "Time when this Event was last observed.",
            ),
            ("Type", "string", 0, "Type of this event."),
            ("Reason", "string", 0, "Why the action was taken."),
            ("Object", "string", 0, "The object this Event is about."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![
            json!(event_time(
                o,
                &[
                    "/deprecatedLastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp"
                ]
            )),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/regarding/kind").to_lowercase(),
                s(o, "/regarding/name")
            )),
            json!(s(o, "/note")),
        ]
    }
}
