//! When the node's certificates are renewed, as the kubelet's certificate manager schedules it:
//! at 70% of the lifetime plus up to a fifth of that again (jitter, so a fleet of nodes started
//! together does not renew together), at once when there is none or it has expired, retried
//! with back-off when renewing fails.

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::certificate_store::CertificateStore;

/// How long the node waits for a request to be approved and signed.
pub const SIGNING_WAIT: Duration = Duration::from_secs(15 * 60);

/// When a certificate valid from `not_before` to `not_after` is renewed.
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let jitter = 1.0 + rand::random::<f64>() * 0.2;
    not_before + lifetime.mul_f64(0.7 * jitter)
}

/// Calls `renew` (which stores a new pair in `store`) whenever the store's current pair is due,
/// for as long as the node runs. `what` names the certificate in the logs.
pub async fn keep_renewed<F, Fut>(store: CertificateStore, what: &'static str, mut renew: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut retry = Duration::from_secs(1);
    loop {
        if let Some(pair) = store.current().filter(|p| p.is_current()) {
            let deadline = rotation_deadline(pair.not_before, pair.not_after);
            let wait = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tracing::info!(certificate = what, expires = %chrono::DateTime::<chrono::Utc>::from(pair.not_after), in_seconds = wait.as_secs(), "rotation scheduled");
            tokio::time::sleep(wait).await;
        }
        match renew().await {
            Ok(()) => retry = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(certificate = what, error = format!("{e:#}"), retry_in = ?retry, "renewal failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_deadline_falls_in_the_jittered_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_secs(1_000);
        for _ in 0..100 {
            let d = rotation_deadline(start, end)
                .duration_since(start)
                .unwrap()
                .as_secs_f64();
            assert!((700.0..=840.0).contains(&d), "{d}");
        }
    }
}
