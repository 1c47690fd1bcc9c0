//! Indexed Jobs: the completion index a pod carries (annotation and label
//! `batch.kubernetes.io/job-completion-index`, hostname `JOB-INDEX`, and `JOB_COMPLETION_INDEX`
//! in every container's environment from that label), and the sets of indexes in the interval
//! form of `status.completedIndexes` ("1,3-5").

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};

pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// The completion index of a pod, if it has a valid one.
pub fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(INDEX)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// Marks a pod template with its completion index.
pub fn set_index(template: &mut PodTemplateSpec, job_name: &str, index: i32) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(INDEX.into(), index.to_string());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(INDEX.into(), index.to_string());
    let spec = template.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(format!("{job_name}-{index}"));
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let env = c.env.get_or_insert_with(Vec::new);
        if env.iter().any(|e| e.name == INDEX_ENV) {
            continue;
        }
        env.push(EnvVar {
            name: INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{INDEX}']"),
                }),
                ..Default::default()
            }),
        });
    }
}

/// Parses `status.completedIndexes`, keeping indexes below `completions`.
pub fn parse(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse(), part.parse()),
        };
        if let (Ok(first), Ok(last)) = (first, last) {
            out.extend(first.max(0)..=last.min(completions - 1));
        }
    }
    out
}

/// Formats indexes as kube does: runs of three or more as "a-b", pairs as "a,b".
pub fn format(indexes: &BTreeSet<i32>) -> String {
    let mut runs: Vec<(i32, i32)> = Vec::new();
    for &i in indexes {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => runs.push((i, i)),
        }
    }
    runs.iter()
        .map(|&(a, b)| match b - a {
            0 => a.to_string(),
            1 => format!("{a},{b}"),
            _ => format!("{a}-{b}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The lowest `count` indexes below `completions` neither succeeded nor held by an active pod.
pub fn first_pending(taken: &BTreeSet<i32>, count: usize, completions: i32) -> Vec<i32> {
    (0..completions)
        .filter(|i| !taken.contains(i))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_round_trip_in_kube_form() {
        let set: BTreeSet<i32> = [0, 1, 3, 4, 5, 7, 9, 10].into();
        assert_eq!(format(&set), "0,1,3-5,7,9,10");
        assert_eq!(parse("0,1,3-5,7,9,10", 20), set);
        assert_eq!(parse("2-8", 5), [2, 3, 4].into());
        assert_eq!(format(&BTreeSet::new()), "");
    }

    #[test]
    fn pending_indexes_skip_taken_ones() {
        assert_eq!(first_pending(&[0, 2].into(), 2, 5), [1, 3]);
        assert_eq!(first_pending(&[0, 1, 2].into(), 2, 3), Vec::<i32>::new());
    }

    #[test]
    fn an_indexed_template_carries_its_index_everywhere() {
        let mut t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "c"}]}}))
        .unwrap();
        set_index(&mut t, "work", 3);
        let meta = t.metadata.as_ref().unwrap();
        assert_eq!(meta.annotations.as_ref().unwrap()[INDEX], "3");
        assert_eq!(meta.labels.as_ref().unwrap()[INDEX], "3");
        let spec = t.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-3"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
    }
}
