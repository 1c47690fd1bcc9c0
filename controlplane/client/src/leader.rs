//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection: a
//! candidate takes the Lease when it is free or its holder has not renewed it for the lease
//! duration, renews it every retry period, and stops leading when it cannot renew within the
//! renew deadline. Work guarded by [`lead`] runs only while this process holds the Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// kube-controller-manager's defaults (15 s, 10 s, 2 s) for the Lease `kube-system/name`.
    pub fn new(name: &str) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "skiff".into());
        Election {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Tries once to take or renew the Lease; whether this candidate holds it now.
    async fn try_acquire(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = i64::from(
            spec.lease_duration_seconds
                .unwrap_or(self.lease_duration.as_secs() as i32),
        );
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0.as_second() + duration <= now.as_second());
        let free = spec
            .holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty();
        if !mine && !expired && !free {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.lease_duration.as_secs() as i32);
        // The resourceVersion makes this a compare-and-swap: one of two racing candidates wins.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Waits to become leader, then runs `work` until it ends or leadership is lost. Returns when
/// leadership is lost (the caller campaigns again) or the work ends.
pub async fn lead<F>(client: Client, election: &Election, work: F)
where
    F: std::future::Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    loop {
        match election.try_acquire(&api).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::debug!(lease = %election.name, error = %e, "acquiring the lease"),
        }
        tokio::time::sleep(election.retry_period).await;
    }
    tracing::info!(lease = %election.name, identity = %election.identity, "became leader");
    let renew = async {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(election.retry_period).await;
            match election.try_acquire(&api).await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => tracing::warn!(lease = %election.name, error = %e, "renewing the lease"),
            }
            if last.elapsed() > election.renew_deadline {
                return;
            }
        }
    };
    tokio::select! {
        _ = work => {}
        _ = renew => tracing::warn!(lease = %election.name, "lost the lease; stopped leading"),
    }
}
