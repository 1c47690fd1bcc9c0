//! The resources this API server serves: names, scope, short names, categories, subresources,
//! and the k8s-openapi type each one is (de)serialised through.

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, scheduling};
use k8s_openapi::schemars::SchemaGenerator;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

#[derive(Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources: `status`, `scale`, `binding`, `eviction`, `finalize`.
    pub subresources: &'static [&'static str],
    /// Key segment under `/registry/`.
    pub storage: &'static str,
    /// OpenAPI definition name of the type (also selects the k8s-openapi type).
    pub schema: &'static str,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// `pods`, `deployments.apps`: how errors name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The key prefix of a namespace (or of every object when `namespace` is `None`).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/", self.storage, ns),
            _ => format!("/registry/{}/", self.storage),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/{}", self.storage, ns, name),
            _ => format!("/registry/{}/{}", self.storage, name),
        }
    }

    /// Workloads and namespaces carry `metadata.generation`, bumped on spec changes.
    pub fn tracks_generation(&self) -> bool {
        matches!(
            self.kind,
            "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "StatefulSet"
        )
    }
}

macro_rules! r {
    ($group:literal, $version:literal, $kind:literal, $plural:literal, $singular:literal,
     $namespaced:literal, [$($short:literal),*], [$($cat:literal),*], [$($sub:literal),*],
     $storage:literal, $schema:literal) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            storage: $storage,
            schema: $schema,
        }
    };
}

pub static RESOURCES: &[ResourceInfo] = &[
    r!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        ["ns"],
        [],
        ["status", "finalize"],
        "namespaces",
        "io.k8s.api.core.v1.Namespace"
    ),
    r!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        ["po"],
        ["all"],
        ["status", "binding", "eviction"],
        "pods",
        "io.k8s.api.core.v1.Pod"
    ),
    r!(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        false,
        ["no"],
        [],
        ["status"],
        "minions",
        "io.k8s.api.core.v1.Node"
    ),
    r!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        ["svc"],
        ["all"],
        ["status"],
        "services/specs",
        "io.k8s.api.core.v1.Service"
    ),
    r!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        ["ep"],
        [],
        [],
        "services/endpoints",
        "io.k8s.api.core.v1.Endpoints"
    ),
    r!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        ["cm"],
        [],
        [],
        "configmaps",
        "io.k8s.api.core.v1.ConfigMap"
    ),
    r!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        true,
        [],
        [],
        [],
        "secrets",
        "io.k8s.api.core.v1.Secret"
    ),
    r!(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        ["ev"],
        [],
        [],
        "events",
        "io.k8s.api.core.v1.Event"
    ),
    r!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        ["sa"],
        [],
        [],
        "serviceaccounts",
        "io.k8s.api.core.v1.ServiceAccount"
    ),
    r!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        ["deploy"],
        ["all"],
        ["status", "scale"],
        "deployments",
        "io.k8s.api.apps.v1.Deployment"
    ),
    r!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        ["rs"],
        ["all"],
        ["status", "scale"],
        "replicasets",
        "io.k8s.api.apps.v1.ReplicaSet"
    ),
    r!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        ["ds"],
        ["all"],
        ["status"],
        "daemonsets",
        "io.k8s.api.apps.v1.DaemonSet"
    ),
    r!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        [],
        [],
        [],
        "controllerrevisions",
        "io.k8s.api.apps.v1.ControllerRevision"
    ),
    r!(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        [],
        ["all"],
        ["status"],
        "jobs",
        "io.k8s.api.batch.v1.Job"
    ),
    r!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        [],
        [],
        [],
        "leases",
        "io.k8s.api.coordination.v1.Lease"
    ),
    r!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        [],
        [],
        [],
        "endpointslices",
        "io.k8s.api.discovery.v1.EndpointSlice"
    ),
    r!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        ["pc"],
        [],
        [],
        "priorityclasses",
        "io.k8s.api.scheduling.v1.PriorityClass"
    ),
    r!(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        ["ev"],
        [],
        [],
        "events",
        "io.k8s.api.events.v1.Event"
    ),
];

/// The API groups in discovery order (core first), each with its one served version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

macro_rules! typed {
    ($($name:literal => $t:ty),* $(,)?) => {
        /// Decodes `v` as the k8s-openapi type named `schema` and encodes it again: type errors
        /// are reported, unknown fields dropped and the JSON shaped as the real API writes it.
        pub fn normalize(schema: &str, v: Value) -> Result<Value, String> {
            match schema {
                $($name => roundtrip::<$t>(v),)*
                _ => Ok(v),
            }
        }

        /// Registers the schema of every served type (and, through references, their parts).
        pub fn register_schemas(generator: &mut SchemaGenerator) {
            $( generator.subschema_for::<$t>(); )*
        }
    };
}

typed! {
    "io.k8s.api.core.v1.Namespace" => core::v1::Namespace,
    "io.k8s.api.core.v1.Pod" => core::v1::Pod,
    "io.k8s.api.core.v1.Node" => core::v1::Node,
    "io.k8s.api.core.v1.Service" => core::v1::Service,
    "io.k8s.api.core.v1.Endpoints" => core::v1::Endpoints,
    "io.k8s.api.core.v1.ConfigMap" => core::v1::ConfigMap,
    "io.k8s.api.core.v1.Secret" => core::v1::Secret,
    "io.k8s.api.core.v1.Event" => core::v1::Event,
    "io.k8s.api.core.v1.ServiceAccount" => core::v1::ServiceAccount,
    "io.k8s.api.core.v1.Binding" => core::v1::Binding,
    "io.k8s.api.apps.v1.Deployment" => apps::v1::Deployment,
    "io.k8s.api.apps.v1.ReplicaSet" => apps::v1::ReplicaSet,
    "io.k8s.api.apps.v1.DaemonSet" => apps::v1::DaemonSet,
    "io.k8s.api.apps.v1.ControllerRevision" => apps::v1::ControllerRevision,
    "io.k8s.api.batch.v1.Job" => batch::v1::Job,
    "io.k8s.api.coordination.v1.Lease" => coordination::v1::Lease,
    "io.k8s.api.discovery.v1.EndpointSlice" => discovery::v1::EndpointSlice,
    "io.k8s.api.events.v1.Event" => events::v1::Event,
    "io.k8s.api.scheduling.v1.PriorityClass" => scheduling::v1::PriorityClass,
    "io.k8s.api.autoscaling.v1.Scale" => k8s_openapi::api::autoscaling::v1::Scale,
    "io.k8s.api.policy.v1.Eviction" => k8s_openapi::api::policy::v1::Eviction,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_has_a_type_and_unique_names() {
        for r in RESOURCES {
            let v = serde_json::json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            assert!(normalize(r.schema, v).is_ok(), "{}", r.kind);
            let same_plural = RESOURCES
                .iter()
                .filter(|o| o.plural == r.plural && o.group == r.group)
                .count();
            assert_eq!(same_plural, 1, "{}", r.plural);
        }
    }

    #[test]
    fn normalize_rejects_wrong_types_and_drops_unknown_fields() {
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 5}});
        assert!(normalize("io.k8s.api.core.v1.Pod", bad).is_err());
        let extra = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "bogus": 1});
        let out = normalize("io.k8s.api.core.v1.ConfigMap", extra).unwrap();
        assert!(out.get("bogus").is_none());
    }
}
