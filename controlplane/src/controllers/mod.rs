//! The controllers, each a kube-rs `Controller` (watcher → reflector → reconcile) whose
//! `reconcile(object) -> Action` reads the current state straight from the API server, so that a
//! decision never rests on a cache that lags behind its own writes.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod job;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod replicaset;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What every reconcile gets: a client and an event recorder.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, controller: &str) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: controller.into(),
                instance: None,
            },
        );
        Arc::new(Context { client, recorder })
    }
}

/// Requeue policy after a failed reconcile: retry soon; conflicts resolve on the next read.
pub fn error_policy<K>(_obj: Arc<K>, err: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::debug!(error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

/// Whether `selector` (a workload's, never empty) selects `labels`.
pub fn selects(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return false;
    }
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// The owner reference a controller puts on what it creates.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The uid of the object's controlling owner.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// A 404: the object is already gone.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Drains a controller stream, logging failures.
pub async fn drive<S, T, E>(name: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = name, error = %e, "reconcile");
            }
        })
        .await;
}

/// Settings of the controllers that have any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub cluster_cidr: nodeipam::ClusterCidr,
    pub lifecycle: nodelifecycle::LifecycleConfig,
}

/// Runs every controller until the process ends.
pub async fn run(client: Client, cfg: Config) {
    tokio::join!(
        replicaset::run(client.clone()),
        deployment::run(client.clone()),
        daemonset::run(client.clone()),
        job::run(client.clone()),
        endpoints::run(client.clone()),
        nodeipam::run(client.clone(), cfg.cluster_cidr),
        nodelifecycle::run(client.clone(), cfg.lifecycle),
    );
}
