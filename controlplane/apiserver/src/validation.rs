//! Validation of the built-in types: names, labels, required fields, enumerations, a pod's
//! containers, workload selectors, and the fields that may not change on update. Each problem is
//! reported with the path of the field, as the real API server's 422 responses do.

use std::collections::HashSet;

use serde_json::Value;

use super::resources::ResourceInfo;
use super::selectors::LabelSelector;
use super::status::FieldError;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A label or annotation key: optional DNS subdomain prefix and a name of at most 63 characters.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The rule an object's name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
    /// Any name usable as one path segment (RBAC objects: `system:discovery`).
    PathSegment,
}

/// kube's `ValidatePathSegmentName`.
fn is_path_segment(s: &str) -> bool {
    s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

impl NameRule {
    fn check(self) -> (fn(&str) -> bool, &'static str) {
        match self {
            NameRule::Dns1123Label => (is_dns1123_label, DNS1123_LABEL_MSG),
            NameRule::Dns1035Label => (is_dns1035_label, DNS1035_LABEL_MSG),
            NameRule::Dns1123Subdomain => (is_dns1123_subdomain, DNS1123_SUBDOMAIN_MSG),
            NameRule::PathSegment => (
                is_path_segment,
                "may not be '.' or '..' and may not contain '/' or '%'",
            ),
        }
    }
}

fn metadata(r: &ResourceInfo, o: &Value, errs: &mut Vec<FieldError>) {
    let m = &o["metadata"];
    match m["name"].as_str() {
        None | Some("") => errs.push(FieldError::required("metadata.name")),
        Some(n) => {
            let (ok, msg) = r.strategy.name_rule().check();
            if !ok(n) {
                errs.push(FieldError::invalid("metadata.name", &m["name"], msg));
            }
        }
    }
    if r.namespaced && m["namespace"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required("metadata.namespace"));
    }
    if let Some(labels) = m["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    &Value::String(k.clone()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
            if !is_label_value(v.as_str().unwrap_or_default()) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
    if let Some(ann) = m["annotations"].as_object() {
        for k in ann.keys() {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

/// What ephemeral containers may not have (they are never restarted, probed or given
/// resources), and their target, which must be one of the pod's containers.
fn ephemeral_containers(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let named = |key: &str, name: &str| {
        spec[key]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == name)
    };
    for (i, c) in spec["ephemeralContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}[{i}]");
        for field in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resources",
            "resizePolicy",
            "restartPolicy",
        ] {
            let set = |v: &Value| match v {
                Value::Null => false,
                Value::Object(o) => !o.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if c.get(field).is_some_and(set) {
                errs.push(FieldError::forbidden(
                    format!("{p}.{field}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(target) = c["targetContainerName"].as_str()
            && !target.is_empty()
            && !named("containers", target)
            && !named("initContainers", target)
        {
            errs.push(FieldError::not_found(
                format!("{p}.targetContainerName"),
                &c["targetContainerName"],
            ));
        }
    }
}

pub(crate) fn port_in_range(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

pub(crate) const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn containers(
    path: &str,
    list: &Value,
    required: bool,
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    let Some(cs) = list.as_array() else {
        if required {
            errs.push(FieldError::required(path));
        }
        return;
    };
    if cs.is_empty() && required {
        errs.push(FieldError::required(path));
    }
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match c["name"].as_str() {
            None | Some("") => errs.push(FieldError::required(format!("{p}.name"))),
            Some(n) if !is_dns1123_label(n) => errs.push(FieldError::invalid(
                format!("{p}.name"),
                &c["name"],
                DNS1123_LABEL_MSG,
            )),
            Some(n) => {
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), &c["name"]));
                }
            }
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            errs.push(FieldError::required(format!("{p}.image")));
        }
        for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if !port_in_range(&port["containerPort"]) {
                errs.push(FieldError::invalid(
                    format!("{pp}.containerPort"),
                    &port["containerPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(proto) = port["protocol"].as_str()
                && !PROTOCOLS.contains(&proto)
            {
                errs.push(FieldError::not_supported(
                    format!("{pp}.protocol"),
                    &port["protocol"],
                    PROTOCOLS,
                ));
            }
        }
        if let Some(policy) = c["imagePullPolicy"].as_str() {
            const P: &[&str] = &["Always", "IfNotPresent", "Never"];
            if !P.contains(&policy) {
                errs.push(FieldError::not_supported(
                    format!("{p}.imagePullPolicy"),
                    &c["imagePullPolicy"],
                    P,
                ));
            }
        }
    }
}

/// Validates a pod spec found at `path`.
pub fn pod_spec(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let mut names = HashSet::new();
    containers(
        &format!("{path}.containers"),
        &spec["containers"],
        true,
        &mut names,
        errs,
    );
    containers(
        &format!("{path}.initContainers"),
        &spec["initContainers"],
        false,
        &mut names,
        errs,
    );
    let ephemeral_path = format!("{path}.ephemeralContainers");
    containers(
        &ephemeral_path,
        &spec["ephemeralContainers"],
        false,
        &mut names,
        errs,
    );
    ephemeral_containers(&ephemeral_path, spec, errs);
    if let Some(rp) = spec["restartPolicy"].as_str() {
        const P: &[&str] = &["Always", "OnFailure", "Never"];
        if !P.contains(&rp) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &spec["restartPolicy"],
                P,
            ));
        }
    }
    if let Some(dp) = spec["dnsPolicy"].as_str() {
        const P: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !P.contains(&dp) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                &spec["dnsPolicy"],
                P,
            ));
        }
    }
    let mut vol_names = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        match v["name"].as_str() {
            Some(n) if is_dns1123_label(n) => {
                if !vol_names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(
                        format!("{path}.volumes[{i}].name"),
                        &v["name"],
                    ));
                }
            }
            Some(_) => errs.push(FieldError::invalid(
                format!("{path}.volumes[{i}].name"),
                &v["name"],
                DNS1123_LABEL_MSG,
            )),
            None => errs.push(FieldError::required(format!("{path}.volumes[{i}].name"))),
        }
    }
    if let Some(g) = spec["terminationGracePeriodSeconds"].as_i64()
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            &spec["terminationGracePeriodSeconds"],
            "must be greater than or equal to 0",
        ));
    }
}

pub(crate) fn workload_template(o: &Value, errs: &mut Vec<FieldError>, need_selector: bool) {
    let spec = &o["spec"];
    let sel = &spec["selector"];
    let empty_selector = sel.is_null()
        || (sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && sel["matchExpressions"]
                .as_array()
                .is_none_or(|m| m.is_empty()));
    if need_selector && empty_selector {
        errs.push(FieldError::required("spec.selector"));
    }
    if spec["template"].is_null() {
        errs.push(FieldError::required("spec.template"));
        return;
    }
    if !empty_selector {
        let labels = spec.pointer("/template/metadata/labels");
        match LabelSelector::from_label_selector(sel) {
            None => errs.push(FieldError::invalid(
                "spec.selector",
                sel,
                "not a valid label selector",
            )),
            Some(s) if !s.matches(labels.and_then(Value::as_object)) => {
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    labels.unwrap_or(&Value::Null),
                    "`selector` does not match template `labels`",
                ))
            }
            Some(_) => {}
        }
    }
    pod_spec("spec.template.spec", &spec["template"]["spec"], errs);
    if let Some(r) = spec["replicas"].as_i64()
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
}

pub(crate) fn data_keys(field: &str, o: &Value, errs: &mut Vec<FieldError>) {
    if let Some(m) = o[field].as_object() {
        for k in m.keys() {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    field,
                    &Value::String(k.clone()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
        }
    }
}

/// Validates a whole object of resource `r` (on create and update).
pub fn validate(r: &ResourceInfo, o: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    metadata(r, o, &mut errs);
    r.strategy.validate(o, &mut errs);
    errs
}

pub(crate) fn immutable(field: &str, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let ptr = format!("/{}", field.replace('.', "/"));
    let (a, b) = (old.pointer(&ptr), new.pointer(&ptr));
    if a != b {
        errs.push(FieldError::invalid(
            field,
            b.unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

/// The rules that only apply on update: what may not change.
pub fn validate_update(r: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    r.strategy.validate_update(old, new, &mut errs);
    errs
}

/// `data`, `binaryData` and `immutable` of an object that was made immutable.
pub(crate) fn immutable_data(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old["immutable"] == Value::Bool(true) {
        for f in ["data", "binaryData", "immutable"] {
            if old.get(f) != new.get(f) {
                errs.push(FieldError::forbidden(
                    f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn names_and_containers_are_checked_with_field_paths() {
        let pods = find("", "v1", "pods").unwrap();
        let bad = json!({"metadata": {"name": "Bad_Name", "namespace": "d"}, "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x"}]}});
        let errs = validate(pods, &bad);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.containers[0].image",
                "spec.containers[1].name"
            ]
        );
        let none = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {}});
        assert_eq!(validate(pods, &none)[0].field, "spec.containers");
    }

    #[test]
    fn deployment_selector_must_match_and_is_immutable() {
        let d = find("apps", "v1", "deployments").unwrap();
        let o = json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(validate(d, &o)[0].field, "spec.template.metadata.labels");
        let mut n = o.clone();
        n["spec"]["selector"]["matchLabels"]["app"] = json!("x");
        assert_eq!(validate_update(d, &o, &n)[0].field, "spec.selector");
    }

    #[test]
    fn a_controller_revision_needs_data_that_never_changes() {
        let r = find("apps", "v1", "controllerrevisions").unwrap();
        let meta = json!({"name": "ds-1", "namespace": "d"});
        let errs = validate(r, &json!({"metadata": meta, "revision": -1}));
        let msgs: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            msgs,
            [
                ("data", "Required value: data is mandatory"),
                (
                    "revision",
                    "Invalid value: -1: must be greater than or equal to 0"
                )
            ]
        );
        let old = json!({"metadata": meta, "revision": 1, "data": {"a": 1}});
        let mut bumped = old.clone();
        bumped["revision"] = json!(2);
        assert!(validate(r, &bumped).is_empty());
        assert!(validate_update(r, &old, &bumped).is_empty());
        let mut changed = old.clone();
        changed["data"] = json!({"a": 2});
        assert_eq!(validate_update(r, &old, &changed)[0].field, "data");
    }

    #[test]
    fn label_rules() {
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("-bad"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_label("a.b"));
    }
}
