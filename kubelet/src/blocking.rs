//! Synchronous file work (fsyncs above all: about 10 ms each on the node's disk) done from async
//! code without holding up the runtime's other tasks. With two cores the runtime has two worker
//! threads: a pod worker that fsyncs on one stalls every other pod, the API watches and the
//! pod manager meanwhile, and only two fsyncs are in flight. Run through [`run`], the fsyncs of
//! many pods go to the disk at once (ext4 commits them together) while the other tasks move on.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` on this thread after handing this worker's other tasks to another thread
/// (`block_in_place`) on a multi-threaded runtime; inline elsewhere (a current-thread runtime,
/// as in tests, has no other thread to hand them to).
pub fn run<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_on_a_multi_threaded_runtime() {
        assert_eq!(super::run(|| 7), 7);
    }

    #[tokio::test]
    async fn runs_on_a_current_thread_runtime() {
        assert_eq!(super::run(|| 7), 7);
    }

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(super::run(|| 7), 7);
    }
}
