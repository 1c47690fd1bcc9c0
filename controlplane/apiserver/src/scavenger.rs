//! Gives the heap's free pages back to the kernel now and then, as Go's runtime scavenger does
//! for kube-apiserver. glibc returns memory only from the top of a heap; pages freed in the
//! middle stay resident. Load spikes (a thousand watchers' initial lists, a burst of writes)
//! leave such pages behind: in the soak benchmark (10,000 pods, 1,000 watchers) one trim took a
//! server without this from 152 to 113 MiB. Under steady load the freed pages are soon used
//! again, so this lowers the server's memory after load, not its peak.

use std::time::{Duration, Instant};

/// How often free pages are given back. A trim walks every arena with its lock held for a few
/// milliseconds; under load the heap fragments again within tens of seconds.
const PERIOD: Duration = Duration::from_secs(10);

/// Trims the heap every [`PERIOD`] for the life of the runtime.
pub fn spawn() {
    tokio::spawn(async {
        let mut ticker = tokio::time::interval(PERIOD);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Ok(took) = tokio::task::spawn_blocking(trim).await {
                tracing::trace!(took_us = took.as_micros() as u64, "heap trimmed");
            }
        }
    });
}

/// Releases every whole free page of every malloc arena; returns how long that took.
pub fn trim() -> Duration {
    let start = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    start.elapsed()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024
    }

    #[test]
    fn pages_freed_between_live_allocations_are_given_back() {
        // 64 KiB blocks (under glibc's mmap threshold, so on the heap), each followed by a
        // small one that stays: the blocks' memory cannot be returned from the heap's top.
        let mut blocks = Vec::new();
        let mut kept = Vec::new();
        for i in 0..3000u32 {
            blocks.push(vec![i as u8 | 1; 64 * 1024]);
            kept.push(Box::new(i));
        }
        drop(blocks);
        let before = rss_mib();
        super::trim();
        let after = rss_mib();
        assert!(
            before.saturating_sub(after) >= 100,
            "RSS {before} MiB before the trim, {after} MiB after"
        );
        assert_eq!(kept.len(), 3000);
    }
}
