//! The one clock of the control plane: now, to the second — the precision API timestamps keep
//! (`creationTimestamp`, condition times), so that a time written and read back compares equal.
//! Its `Display` is the RFC 3339 form the API writes (`2026-01-01T00:00:00Z`).

use k8s_openapi::jiff::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second())
        .expect("the current time is a valid timestamp")
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_seconds_in_the_api_form() {
        let s = super::now().to_string();
        assert_eq!(s.len(), "2026-01-01T00:00:00Z".len(), "{s}");
        assert!(s.ends_with('Z'));
    }
}
