//! A work queue as client-go's: an item waits at most once however often it is added, is never
//! handed to two workers at once (added while in work, it comes back when the work is done),
//! and failures come back after an exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(10);

pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Waiting to be worked on (in `queue`, or to go back there when its work is done).
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, item: T) {
        let mut s = self.lock();
        if !s.dirty.insert(item.clone()) || s.processing.contains(&item) {
            return;
        }
        s.queue.push_back(item);
        drop(s);
        self.ready.notify_one();
    }

    /// The next item to work on; call [`done`](Self::done) when finished with it.
    pub async fn next(&self) -> T {
        loop {
            {
                let mut s = self.lock();
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    return item;
                }
            }
            self.ready.notified().await;
        }
    }

    pub fn done(&self, item: &T) {
        let mut s = self.lock();
        s.processing.remove(item);
        if s.dirty.contains(item) {
            s.queue.push_back(item.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// The item succeeded: its next failure starts the backoff again.
    pub fn forget(&self, item: &T) {
        self.lock().failures.remove(item);
    }

    /// Adds the item again after its backoff (5 ms doubling per failure, at most 10 s).
    pub fn retry(self: &Arc<Self>, item: T) {
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(item.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = BASE_DELAY
            .saturating_mul(1 << failures.min(20))
            .min(MAX_DELAY);
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(item);
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_wait_once_and_never_go_to_two_workers() {
        let q = WorkQueue::new();
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let one = q.next().await;
        assert_eq!(one, 1);
        // Added while in work: held back until done.
        q.add(1);
        assert_eq!(q.next().await, 2);
        assert_eq!(q.len(), 0);
        q.done(&1);
        assert_eq!(q.next().await, 1);
        q.done(&1);
        q.done(&2);
        q.retry(3);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), q.next())
                .await
                .unwrap(),
            3
        );
    }
}
