//! The registry: one module per served resource, each with its [`ResourceInfo`] (names, scope,
//! subresources, storage, type) and its [`Strategy`] — what is particular to it, in the spirit of
//! kube-apiserver's `RESTCreateStrategy`/`RESTUpdateStrategy`: defaulting, validation on create
//! and on update, admission, allocation, the stored form, what bumps `metadata.generation`, the fields it may be selected by, the rule
//! its names follow, how it is deleted (graceful deletion, what holds it, the default
//! propagation) and its Table columns (kube-apiserver's `TableConvertor`). The generic handlers ask the strategy and never branch on a kind. A new
//! resource is one module here and one line in [`RESOURCES`].

pub mod certificatesigningrequests;
pub mod clusterrolebindings;
pub mod clusterroles;
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
mod rbac_common;
pub mod replicasets;
pub mod reviews;
pub mod rolebindings;
pub mod roles;
pub mod secrets;
pub mod serviceaccounts;
pub mod services;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::deletion::{DeleteStart, Grace, PropagationPolicy};
use crate::resources::ResourceInfo;
use crate::status::{ApiResult, FieldError};
use crate::table::{self, AGE, Column, NAME};
use crate::validation::NameRule;

/// What is particular to one resource; every method has the behaviour of a resource with
/// nothing particular.
pub trait Strategy: Sync {
    /// Admission of a new object, before defaulting.
    fn admit_create<'a>(
        &'a self,
        _api: &'a ApiServer,
        _o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Admission of an update of `cur` to `new`, before defaulting.
    fn admit_update<'a>(
        &'a self,
        _api: &'a ApiServer,
        _cur: &'a Value,
        _new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether a create keeps the status the client sent (otherwise it starts empty).
    fn keeps_status_on_create(&self) -> bool {
        false
    }

    /// Whether its objects get ClusterIPs and NodePorts allocated (under the allocation lock).
    fn allocates_service_addresses(&self) -> bool {
        false
    }

    /// The form it is stored in.
    fn stored_form(&self, o: Value) -> Value {
        o
    }

    /// The form it is served in, from the stored one.
    fn served_form(&self, o: Value) -> Value {
        o
    }

    /// Fills in the defaults of an object about to be written (create and update).
    fn default(&self, _o: &mut Map<String, Value>) {}

    /// Checks an object about to be written (create and update), beyond its metadata.
    fn validate(&self, _o: &Value, _errs: &mut Vec<FieldError>) {}

    /// The rules that only apply on update: what may not change.
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// The one field (a JSON pointer) a subresource other than `status` writes, such as pods'
    /// `ephemeralcontainers` → `/spec/ephemeralContainers`; everything else of the object is
    /// kept as it is.
    fn subresource_field(&self, _sub: &str) -> Option<&'static str> {
        None
    }

    /// An update through subresource `sub` that is particular to the resource (neither a
    /// [`Strategy::subresource_field`] one nor the generic `status`): `new` turned into what is
    /// written, from `cur` and what was sent, and the requestor's right to make the change
    /// checked. `Ok(false)`: nothing particular, the generic handling applies.
    fn admit_subresource_update<'a>(
        &'a self,
        _api: &'a ApiServer,
        _sub: &'a str,
        _cur: &'a Value,
        _new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<bool>> {
        Box::pin(std::future::ready(Ok(false)))
    }

    /// The rules of an update through a [`Strategy::subresource_field`] subresource, in place
    /// of [`Strategy::validate_update`].
    fn validate_subresource_update(
        &self,
        _sub: &str,
        _old: &Value,
        _new: &Value,
        _errs: &mut Vec<FieldError>,
    ) {
    }

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

    /// How a delete begins, before graceful deletion and finalizers.
    fn begin_delete(
        &self,
        _cur: &Value,
        _new: &mut Value,
        _at: chrono::DateTime<chrono::Utc>,
    ) -> DeleteStart {
        DeleteStart::Proceed
    }

    /// Graceful deletion: what a delete asking for `requested` seconds (or none) does to the
    /// deletion timestamp.
    fn graceful_delete(
        &self,
        _cur: &Value,
        _requested: Option<i64>,
        _at: chrono::DateTime<chrono::Utc>,
    ) -> Grace {
        Grace::NotGraceful
    }

    /// Whether something besides `metadata.finalizers` still holds a marked object.
    fn holds_deletion(&self, _o: &Value) -> bool {
        false
    }

    /// What happens to the dependents when a delete names no propagation policy.
    fn default_propagation(&self) -> PropagationPolicy {
        PropagationPolicy::Background
    }

    /// The warning a delete that names no propagation policy carries.
    fn unset_propagation_warning(&self) -> Option<&'static str> {
        None
    }

    /// The verbs it is served with (discovery).
    fn verbs(&self) -> &'static [&'static str] {
        crate::resources::STANDARD_VERBS
    }

    /// The columns of its Table (`kubectl get`; priority 1 only with `-o wide`).
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }

    /// One object's Table row, a cell per column.
    fn cells(&self, o: &Value) -> Vec<Value> {
        vec![json!(table::s(o, "/metadata/name")), table::age(o)]
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
    &roles::RESOURCE,
    &clusterroles::RESOURCE,
    &rolebindings::RESOURCE,
    &clusterrolebindings::RESOURCE,
    &certificatesigningrequests::RESOURCE,
    &reviews::TOKEN_REVIEWS,
    &reviews::SELF_SUBJECT_REVIEWS,
    &reviews::SUBJECT_ACCESS_REVIEWS,
    &reviews::SELF_SUBJECT_ACCESS_REVIEWS,
    &reviews::LOCAL_SUBJECT_ACCESS_REVIEWS,
    &reviews::SELF_SUBJECT_RULES_REVIEWS,
];

/// What the resource modules share.
mod prelude {
    pub(super) use serde_json::{Map, Value, json};

    pub(super) use futures::future::BoxFuture;

    pub(super) use super::Strategy;
    pub(super) use crate::ApiServer;
    pub(super) use crate::defaults::{child, default, pod_spec as default_pod_spec, template};
    pub(super) use crate::deletion::{DeleteStart, Grace, PropagationPolicy, timestamp};
    pub(super) use crate::resources::ResourceInfo;
    pub(super) use crate::status::ApiResult;
    pub(super) use crate::status::FieldError;
    pub(super) use crate::table::{
        AGE, CONTAINERS, Column, IMAGES, NAME, age, arr, event_time, external_ip, human_duration,
        i, or_none, s, service_ports, template_cells,
    };
    pub(super) use crate::validation::{
        NameRule, PROTOCOLS, data_keys, immutable, immutable_data, pod_spec, port_in_range,
        workload_template,
    };
}
