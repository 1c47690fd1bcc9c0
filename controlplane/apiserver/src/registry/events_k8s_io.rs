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
    strategy: &EventsK8sIo,
};

struct EventsK8sIo;

impl Strategy for EventsK8sIo {
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
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
        ]
    }
}
