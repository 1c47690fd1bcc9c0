//! The registry: one module per served resource, each with its [`ResourceInfo`] (names, scope,
//! subresources, storage, type) and its [`Strategy`] — what is particular to it, in the spirit of
//! kube-apiserver's `RESTCreateStrategy`/`RESTUpdateStrategy`: defaulting, validation on create
//! and on update, what bumps `metadata.generation`, the fields it may be selected by and the rule
//! its names follow. The generic handlers ask the strategy and never branch on a kind. A new
//! resource is one module here and one line in [`RESOURCES`].

pub mod configmaps;
pub mod controllerrevisions;
pub mod daemonsets;
pub mod deployments;
pub mod endpoints;
pub mod endpointslices;
pub mod events;
pub mod events_k8s_io;
pub mod jobs;
pub mod leases;
pub mod namespaces;
pub mod nodes;
pub mod pods;
pub mod priorityclasses;
pub mod replicasets;
pub mod secrets;
pub mod serviceaccounts;
pub mod services;

use serde_json::{Map, Value};

use crate::resources::ResourceInfo;
use crate::status::FieldError;
use crate::validation::NameRule;

/// What is particular to one resource; every method has the behaviour of a resource with
/// nothing particular.
pub trait Strategy: Sync {
    /// Fills in the defaults of an object about to be written (create and update).
    fn default(&self, _o: &mut Map<String, Value>) {}

    /// Checks an object about to be written (create and update), beyond its metadata.
    fn validate(&self, _o: &Value, _errs: &mut Vec<FieldError>) {}

    /// The rules that only apply on update: what may not change.
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// Whether the object carries `metadata.generation`, bumped when its spec changes.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Field paths it may be selected by, beyond `metadata.name` and `metadata.namespace`.
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// The rule its names follow.
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1123Subdomain
    }
}

/// The served resources, in discovery order (core first).
pub static RESOURCES: &[&ResourceInfo] = &[
    &namespaces::RESOURCE,
    &pods::RESOURCE,
    &nodes::RESOURCE,
    &services::RESOURCE,
    &endpoints::RESOURCE,
    &configmaps::RESOURCE,
    &secrets::RESOURCE,
    &events::RESOURCE,
    &serviceaccounts::RESOURCE,
    &deployments::RESOURCE,
    &replicasets::RESOURCE,
    &daemonsets::RESOURCE,
    &controllerrevisions::RESOURCE,
    &jobs::RESOURCE,
    &leases::RESOURCE,
    &endpointslices::RESOURCE,
    &priorityclasses::RESOURCE,
    &events_k8s_io::RESOURCE,
];

/// What the resource modules share.
mod prelude {
    pub(super) use super::Strategy;
    pub(super) use crate::defaults::{child, default, pod_spec as default_pod_spec, template};
    pub(super) use crate::resources::ResourceInfo;
    pub(super) use crate::status::FieldError;
    pub(super) use crate::validation::{
        NameRule, PROTOCOLS, data_keys, immutable, immutable_data, pod_spec, port_in_range,
        workload_template,
    };
}
