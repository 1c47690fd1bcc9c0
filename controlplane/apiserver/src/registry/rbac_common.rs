//! What the four `rbac.authorization.k8s.io/v1` kinds share: their validation (kube's
//! `rbac/validation`), their Table columns, and escalation prevention as their admission.

use super::prelude::*;
use crate::auth::escalation;

pub(super) const CREATED_AT: Column = (
    "Created At",
    "date",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

pub(super) fn role_cells(o: &Value) -> Vec<Value> {
    vec![
        json!(s(o, "/metadata/name")),
        json!(s(o, "/metadata/creationTimestamp")),
    ]
}

pub(super) const ROLE: Column = ("Role", "string", 0, "The role the binding refers to.");

pub(super) fn binding_cells(o: &Value) -> Vec<Value> {
    vec![
        json!(s(o, "/metadata/name")),
        json!(format!(
            "{}/{}",
            s(o, "/roleRef/kind"),
            s(o, "/roleRef/name")
        )),
        age(o),
    ]
}

pub(super) fn validate_rules(o: &Value, errs: &mut Vec<FieldError>) {
    for (i, r) in arr(o, "/rules").enumerate() {
        let field = |f: &str| format!("rules[{i}].{f}");
        let len = |f: &str| r[f].as_array().map_or(0, Vec::len);
        if len("verbs") == 0 {
            errs.push(FieldError::required(field("verbs")));
        }
        let urls = len("nonResourceURLs") > 0;
        let resources = len("resources") > 0 || len("apiGroups") > 0;
        if urls && resources {
            errs.push(FieldError::invalid(
                field("nonResourceURLs"),
                &r["nonResourceURLs"],
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        if !urls && len("apiGroups") == 0 {
            errs.push(FieldError::required(field("apiGroups")));
        }
        if !urls && len("resources") == 0 {
            errs.push(FieldError::required(field("resources")));
        }
    }
}

/// `roleRef` and `subjects` of a binding; `kinds` are the role kinds it may refer to.
pub(super) fn validate_binding(o: &Value, kinds: &[&str], errs: &mut Vec<FieldError>) {
    let rr = &o["roleRef"];
    if rr["apiGroup"].as_str() != Some(crate::auth::rbac::GROUP) {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &rr["apiGroup"],
            &[crate::auth::rbac::GROUP],
        ));
    }
    if !rr["kind"].as_str().is_some_and(|k| kinds.contains(&k)) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &rr["kind"],
            kinds,
        ));
    }
    if rr["name"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required("roleRef.name"));
    }
    for (i, sub) in arr(o, "/subjects").enumerate() {
        if sub["name"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("subjects[{i}].name")));
        }
        let kind = sub["kind"].as_str().unwrap_or_default();
        if !["User", "Group", "ServiceAccount"].contains(&kind) {
            errs.push(FieldError::not_supported(
                format!("subjects[{i}].kind"),
                &sub["kind"],
                &["ServiceAccount", "User", "Group"],
            ));
        }
    }
}

pub(super) fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old["roleRef"] != new["roleRef"] {
        errs.push(FieldError::invalid(
            "roleRef",
            &new["roleRef"],
            "cannot change roleRef",
        ));
    }
}

/// kube defaults a subject's apiGroup by its kind.
pub(super) fn default_subjects(o: &mut Map<String, Value>) {
    if let Some(subjects) = o.get_mut("subjects").and_then(Value::as_array_mut) {
        for sub in subjects.iter_mut().filter_map(Value::as_object_mut) {
            if sub.get("apiGroup").is_none_or(Value::is_null) {
                let group = match sub.get("kind").and_then(Value::as_str) {
                    Some("ServiceAccount") => "",
                    _ => crate::auth::rbac::GROUP,
                };
                sub.insert("apiGroup".into(), json!(group));
            }
        }
    }
}

/// The strategy of RoleBindings and ClusterRoleBindings: they differ only in their resource
/// (which escalation prevention names) and the kinds of role they may refer to.
pub(super) struct BindingStrategy {
    pub resource: &'static str,
    pub role_kinds: &'static [&'static str],
}

impl Strategy for BindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn default(&self, o: &mut Map<String, Value>) {
        default_subjects(o);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_binding(o, self.role_kinds, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_binding_update(old, new, errs);
    }

    fn admit_create<'a>(
        &'a self,
        api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_binding(
            api,
            self.resource,
            o,
        )))
    }

    fn admit_update<'a>(
        &'a self,
        api: &'a ApiServer,
        _cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_binding(
            api,
            self.resource,
            new,
        )))
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ROLE, AGE]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        binding_cells(o)
    }
}
