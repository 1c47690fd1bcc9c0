//! Event (`v1`, `events`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    storage: "events",
    schema: "io.k8s.api.core.v1.Event",
    strategy: &EventStrategy,
};

/// The fields both Event APIs select on: events.k8s.io Events are stored in the core form.
pub(super) const SELECTABLE_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "regarding.kind",
    "regarding.name",
    "regarding.namespace",
    "regarding.uid",
];

struct EventStrategy;

impl Strategy for EventStrategy {
    fn selectable_fields(&self) -> &'static [&'static str] {
        SELECTABLE_FIELDS
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            (
                "Last Seen",
                "string",
                0,
                "Time when this Event was last observed.",
            ),
            (
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            (
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            (
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            (
                "Subobject",
                "string",
                1,
                "The subobject that this event is about.",
            ),
            ("Source", "string", 1, "The component reporting this event."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            (
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded.",
            ),
            (
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            ("Name", "string", 1, "Name of the event."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let obj = format!(
            "{}/{}",
            s(o, "/involvedObject/kind").to_lowercase(),
            s(o, "/involvedObject/name")
        );
        let src = s(o, "/source/component");
        let host = s(o, "/source/host");
        let source = if host.is_empty() {
            src.to_string()
        } else {
            format!("{src}, {host}")
        };
        vec![
            json!(event_time(
                o,
                &[
                    "/lastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp"
                ]
            )),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(obj),
            json!(s(o, "/involvedObject/fieldPath")),
            json!(source),
            json!(s(o, "/message").trim()),
            json!(event_time(
                o,
                &[
                    "/firstTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp"
                ]
            )),
            json!(o["count"].as_i64().unwrap_or(1)),
            name,
        ]
    }
}
