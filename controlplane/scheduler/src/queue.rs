//! The scheduling queue, after kube-scheduler's: an active heap ordered by priority then
//! arrival, a backoff area (1 s doubling to 10 s per failed attempt) and an unschedulable area.
//! A cluster change (a node added or updated, a pod removed) moves unschedulable pods to backoff,
//! or straight to active when their backoff has passed; a pod that failed while such a change
//! happened during its attempt goes to backoff, not to unschedulable, so the change is not missed.
//! Pods left unschedulable for a minute are retried anyway.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    InFlight,
    Backoff(Instant),
    Unschedulable(Instant),
}

struct Entry {
    pod: Arc<Pod>,
    attempts: u32,
    state: State,
    seq: u64,
}

#[derive(PartialEq, Eq)]
struct HeapItem {
    priority: i32,
    seq: u64,
    key: String,
}

impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    heap: BinaryHeap<HeapItem>,
    next_seq: u64,
    cluster_events: u64,
}

impl Inner {
    fn activate(&mut self, key: &str) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.state = State::Active;
            e.seq = seq;
            let priority = e.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            self.heap.push(HeapItem {
                priority,
                seq,
                key: key.to_string(),
            });
        }
    }
}

fn backoff(attempts: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(MAX_BACKOFF)
}

/// Pods waiting to be scheduled, shared by the watch that feeds it and the loop that drains it.
#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Notify,
}

/// A pod handed out by [`Queue::pop`], with the counter `done_*` needs.
pub struct Popped {
    pub key: String,
    pub pod: Arc<Pod>,
    cycle: u64,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// Adds a pending pod or updates the queued copy. A changed spec or labels make an
    /// unschedulable pod worth another attempt; its own status updates do not.
    pub fn add(&self, key: &str, pod: Arc<Pod>) {
        let mut q = lock(&self.inner);
        match q.entries.get_mut(key) {
            Some(e) => {
                let changed =
                    e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
                e.pod = pod;
                if changed && matches!(e.state, State::Unschedulable(_)) {
                    q.activate(key);
                    drop(q);
                    self.ready.notify_one();
                }
            }
            None => {
                q.entries.insert(
                    key.to_string(),
                    Entry {
                        pod,
                        attempts: 0,
                        state: State::Active,
                        seq: 0,
                    },
                );
                q.activate(key);
                drop(q);
                self.ready.notify_one();
            }
        }
    }

    /// Forgets a pod that was bound or deleted.
    pub fn remove(&self, key: &str) {
        lock(&self.inner).entries.remove(key);
    }

    /// Records a change in the cluster that may make unschedulable pods fit.
    pub fn cluster_changed(&self) {
        let mut q = lock(&self.inner);
        q.cluster_events += 1;
        let now = Instant::now();
        let mut wake = Vec::new();
        for (k, e) in q.entries.iter_mut() {
            if let State::Unschedulable(since) = e.state {
                let until = since + backoff(e.attempts);
                if until <= now {
                    wake.push(k.clone());
                } else {
                    e.state = State::Backoff(until);
                }
            }
        }
        let any = !wake.is_empty();
        for k in wake {
            q.activate(&k);
        }
        drop(q);
        if any {
            self.ready.notify_one();
        }
    }

    /// Moves pods whose backoff expired, and long-unschedulable ones, to active.
    pub fn tick(&self) {
        let mut q = lock(&self.inner);
        let now = Instant::now();
        let due: Vec<String> = q
            .entries
            .iter()
            .filter(|(_, e)| match e.state {
                State::Backoff(until) => until <= now,
                State::Unschedulable(since) => now.duration_since(since) >= UNSCHEDULABLE_FLUSH,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let any = !due.is_empty();
        for k in due {
            q.activate(&k);
        }
        drop(q);
        if any {
            self.ready.notify_one();
        }
    }

    /// Waits for the highest-priority active pod.
    pub async fn pop(&self) -> Popped {
        loop {
            let notified = self.ready.notified();
            {
                let mut q = lock(&self.inner);
                while let Some(item) = q.heap.pop() {
                    let cycle = q.cluster_events;
                    let Some(e) = q.entries.get_mut(&item.key) else {
                        continue;
                    };
                    if e.state != State::Active || e.seq != item.seq {
                        continue;
                    }
                    e.state = State::InFlight;
                    return Popped {
                        key: item.key,
                        pod: e.pod.clone(),
                        cycle,
                    };
                }
            }
            notified.await;
        }
    }

    /// The pod fit nowhere: park it until the cluster changes (or back off at once if it already did).
    pub fn done_unschedulable(&self, p: &Popped) {
        let mut q = lock(&self.inner);
        let events = q.cluster_events;
        if let Some(e) = q.entries.get_mut(&p.key)
            && e.state == State::InFlight
        {
            e.attempts += 1;
            let now = Instant::now();
            e.state = if events > p.cycle {
                State::Backoff(now + backoff(e.attempts))
            } else {
                State::Unschedulable(now)
            };
        }
    }

    /// An error unrelated to fit (a failed binding): retry after the backoff.
    pub fn done_error(&self, key: &str) {
        let mut q = lock(&self.inner);
        if let Some(e) = q.entries.get_mut(key) {
            e.attempts += 1;
            e.state = State::Backoff(Instant::now() + backoff(e.attempts));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [], "priority": priority}}),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn priority_then_fifo_and_unschedulable_waits_for_a_change() {
        let q = Queue::default();
        q.add("a", pod(0));
        q.add("b", pod(10));
        q.add("c", pod(0));
        let order: Vec<String> = [q.pop().await, q.pop().await, q.pop().await]
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
        for k in ["a", "b", "c"] {
            q.remove(k);
        }
        q.add("a", pod(0));
        let p = q.pop().await;
        q.done_unschedulable(&p);
        q.tick();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), q.pop())
                .await
                .is_err()
        );
        // A change after the backoff expired wakes it.
        {
            let mut inner = lock(&q.inner);
            if let Some(e) = inner.entries.get_mut("a") {
                e.state = State::Unschedulable(Instant::now() - Duration::from_secs(5));
            }
        }
        q.cluster_changed();
        assert_eq!(q.pop().await.key, "a");
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }
}
