//! What the API server knows of a resource — names, scope, short names, categories,
//! subresources, storage key, its strategy (the resources themselves are in `registry/`) — and
//! the k8s-openapi type each one is (de)serialised through.

use k8s_openapi::api::{
    apps, authentication, authorization, batch, certificates, coordination, core, discovery,
    events, rbac, scheduling,
};
use k8s_openapi::schemars::SchemaGenerator;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::registry::RESOURCES;
use crate::registry::Strategy;

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
    /// What is particular to the resource.
    pub strategy: &'static dyn Strategy,
}

impl std::fmt::Debug for ResourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.kind)
    }
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
}

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
        .copied()
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
    "io.k8s.api.certificates.v1.CertificateSigningRequest" => certificates::v1::CertificateSigningRequest,
    "io.k8s.api.discovery.v1.EndpointSlice" => discovery::v1::EndpointSlice,
    "io.k8s.api.events.v1.Event" => events::v1::Event,
    "io.k8s.api.scheduling.v1.PriorityClass" => scheduling::v1::PriorityClass,
    "io.k8s.api.autoscaling.v1.Scale" => k8s_openapi::api::autoscaling::v1::Scale,
    "io.k8s.api.policy.v1.Eviction" => k8s_openapi::api::policy::v1::Eviction,
    "io.k8s.api.rbac.v1.Role" => rbac::v1::Role,
    "io.k8s.api.rbac.v1.ClusterRole" => rbac::v1::ClusterRole,
    "io.k8s.api.rbac.v1.RoleBinding" => rbac::v1::RoleBinding,
    "io.k8s.api.rbac.v1.ClusterRoleBinding" => rbac::v1::ClusterRoleBinding,
    "io.k8s.api.authentication.v1.TokenReview" => authentication::v1::TokenReview,
    "io.k8s.api.authentication.v1.SelfSubjectReview" => authentication::v1::SelfSubjectReview,
    "io.k8s.api.authentication.v1.TokenRequest" => authentication::v1::TokenRequest,
    "io.k8s.api.authorization.v1.SubjectAccessReview" => authorization::v1::SubjectAccessReview,
    "io.k8s.api.authorization.v1.SelfSubjectAccessReview" => authorization::v1::SelfSubjectAccessReview,
    "io.k8s.api.authorization.v1.LocalSubjectAccessReview" => authorization::v1::LocalSubjectAccessReview,
    "io.k8s.api.authorization.v1.SelfSubjectRulesReview" => authorization::v1::SelfSubjectRulesReview,
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
