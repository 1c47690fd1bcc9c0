//! `spec.podFailurePolicy`: the first rule that matches a failed pod — by a container's non-zero
//! exit code (`onExitCodes`, In/NotIn, optionally one container) or by a pod condition
//! (`onPodConditions`) — decides: `FailJob` fails the Job at once, `Ignore` keeps the failure off
//! the backoff count, `Count` counts it as usual. (`FailIndex` needs `backoffLimitPerIndex`, which
//! this controller does not implement; such rules never match.)

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// What the policy says about one failed pod.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Fail the Job with this message.
    FailJob(String),
    Ignore,
    Count,
}

fn exit_code_matches(cs: &ContainerStatus, req: &PodFailurePolicyOnExitCodesRequirement) -> bool {
    let Some(code) = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code)
    else {
        return false;
    };
    if code == 0 || req.container_name.as_ref().is_some_and(|n| *n != cs.name) {
        return false;
    }
    let listed = req.values.contains(&code);
    match req.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    }
}

/// The verdict for the failed pod `p` (Count when no rule matches or there is no policy).
pub fn verdict(policy: Option<&PodFailurePolicy>, p: &Pod) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::Count;
    };
    let status = p.status.clone().unwrap_or_default();
    let who = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
    for (i, rule) in policy.rules.iter().enumerate() {
        let matched = if let Some(req) = &rule.on_exit_codes {
            status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .find(|cs| exit_code_matches(cs, req))
                .map(|cs| {
                    let code = cs.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
                    format!(
                        "Container {} for pod {who} failed with exit code {} matching {} rule at index {i}",
                        cs.name,
                        code.unwrap_or_default(),
                        rule.action
                    )
                })
        } else {
            rule.on_pod_conditions.iter().flatten().find_map(|req| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == req.type_ && c.status == req.status)
                    .map(|c| {
                        format!(
                            "Pod {who} has condition {} matching {} rule at index {i}",
                            c.type_, rule.action
                        )
                    })
            })
        };
        let Some(message) = matched else { continue };
        match rule.action.as_str() {
            "FailJob" => return Verdict::FailJob(message),
            "Ignore" => return Verdict::Ignore,
            "Count" => return Verdict::Count,
            _ => continue,
        }
    }
    Verdict::Count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failed(code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [{"name": "main", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code}}}]}}))
        .unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1, 42]}},
        ]}))
        .unwrap();
        assert_eq!(
            verdict(Some(&policy), &failed(42, json!([]))),
            Verdict::FailJob("Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 0".into())
        );
        assert_eq!(
            verdict(Some(&policy), &failed(1, json!([]))),
            Verdict::Count
        );
        assert_eq!(
            verdict(Some(&policy), &failed(7, json!([]))),
            Verdict::Ignore
        );
        assert_eq!(
            verdict(
                Some(&policy),
                &failed(1, json!([{"type": "DisruptionTarget", "status": "True"}]))
            ),
            Verdict::Ignore
        );
        assert_eq!(verdict(None, &failed(42, json!([]))), Verdict::Count);
    }
}
