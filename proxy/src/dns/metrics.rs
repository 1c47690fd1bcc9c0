//! Counters of the DNS server, rendered in the Prometheus text format as a fragment the
//! proxy's `/metrics` appends. Plain atomics: every query touches them, so no lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hickory_proto::op::ResponseCode;

/// Upper bounds (seconds) of the latency histogram's buckets: local answers take microseconds,
/// forwarded ones up to the upstream timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The response codes counted by name; anything else is `other`.
const RCODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::NotImp, "NOTIMP"),
];

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The cluster's records.
    Cluster,
    /// The forwarder's cache.
    Cache,
    /// An upstream resolver.
    Upstream,
    /// No answer was looked up (bad request).
    None,
}

const SOURCES: [(Source, &str); 4] = [
    (Source::Cluster, "cluster"),
    (Source::Cache, "cache"),
    (Source::Upstream, "upstream"),
    (Source::None, "none"),
];

#[derive(Debug, Default)]
pub struct DnsMetrics {
    udp: AtomicU64,
    tcp: AtomicU64,
    rcodes: [AtomicU64; RCODES.len() + 1],
    sources: [AtomicU64; SOURCES.len()],
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    upstream_errors: AtomicU64,
}

impl DnsMetrics {
    /// One answered request.
    pub fn record(&self, tcp: bool, code: ResponseCode, source: Source, latency: Duration) {
        if tcp { &self.tcp } else { &self.udp }.fetch_add(1, Relaxed);
        let rcode = RCODES
            .iter()
            .position(|(c, _)| *c == code)
            .unwrap_or(RCODES.len());
        self.rcodes[rcode].fetch_add(1, Relaxed);
        let source = SOURCES.iter().position(|(s, _)| *s == source).unwrap_or(0);
        self.sources[source].fetch_add(1, Relaxed);
        let seconds = latency.as_secs_f64();
        // Buckets are stored non-cumulatively and summed when rendered.
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[bucket].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// An upstream resolver that did not answer in time or answered garbage.
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP skiff_dns_requests_total DNS requests answered, by transport.\n");
        out.push_str("# TYPE skiff_dns_requests_total counter\n");
        for (proto, counter) in [("udp", &self.udp), ("tcp", &self.tcp)] {
            let _ = writeln!(
                out,
                "skiff_dns_requests_total{{proto=\"{proto}\"}} {}",
                counter.load(Relaxed)
            );
        }
        out.push_str("# HELP skiff_dns_responses_total DNS responses, by response code.\n");
        out.push_str("# TYPE skiff_dns_responses_total counter\n");
        let names = RCODES.iter().map(|(_, n)| *n).chain(["other"]);
        for (name, counter) in names.zip(&self.rcodes) {
            let _ = writeln!(
                out,
                "skiff_dns_responses_total{{rcode=\"{name}\"}} {}",
                counter.load(Relaxed)
            );
        }
        out.push_str("# HELP skiff_dns_answers_total DNS answers, by where they came from.\n");
        out.push_str("# TYPE skiff_dns_answers_total counter\n");
        for ((_, name), counter) in SOURCES.iter().zip(&self.sources) {
            let _ = writeln!(
                out,
                "skiff_dns_answers_total{{source=\"{name}\"}} {}",
                counter.load(Relaxed)
            );
        }
        out.push_str("# HELP skiff_dns_upstream_errors_total Upstream exchanges that failed.\n");
        out.push_str("# TYPE skiff_dns_upstream_errors_total counter\n");
        let _ = writeln!(
            out,
            "skiff_dns_upstream_errors_total {}",
            self.upstream_errors.load(Relaxed)
        );
        out.push_str("# HELP skiff_dns_request_duration_seconds Time from request to response.\n");
        out.push_str("# TYPE skiff_dns_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (le, counter) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += counter.load(Relaxed);
            let _ = writeln!(
                out,
                "skiff_dns_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "skiff_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "skiff_dns_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "skiff_dns_request_duration_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_codes_and_cumulative_buckets() {
        let m = DnsMetrics::default();
        m.record(
            false,
            ResponseCode::NoError,
            Source::Cluster,
            Duration::from_micros(50),
        );
        m.record(
            true,
            ResponseCode::NXDomain,
            Source::Cluster,
            Duration::from_millis(3),
        );
        m.record(
            false,
            ResponseCode::BADVERS,
            Source::None,
            Duration::from_secs(9),
        );
        let text = m.render();
        for line in [
            "skiff_dns_requests_total{proto=\"udp\"} 2",
            "skiff_dns_requests_total{proto=\"tcp\"} 1",
            "skiff_dns_responses_total{rcode=\"NOERROR\"} 1",
            "skiff_dns_responses_total{rcode=\"NXDOMAIN\"} 1",
            "skiff_dns_responses_total{rcode=\"other\"} 1",
            "skiff_dns_answers_total{source=\"cluster\"} 2",
            "skiff_dns_request_duration_seconds_bucket{le=\"0.0001\"} 1",
            "skiff_dns_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "skiff_dns_request_duration_seconds_bucket{le=\"2.5\"} 2",
            "skiff_dns_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "skiff_dns_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
