//! Label selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`, parsed by skiff-k8s) and field selectors
//! (`metadata.name=x,spec.nodeName!=y`) as list and watch requests carry them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use skiff_k8s::labels::{self, Selector, SelectorExt};

use super::resources::ResourceInfo;
use super::status::ApiError;

/// A label selector (kube's, from skiff-k8s) applied to objects as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Selector);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        labels::parse(s)
            .map(Self)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// The selector a workload's `spec.selector` means; `None` when it is not a valid
    /// `LabelSelector` (a wrong type, an unknown operator).
    pub fn from_label_selector(sel: &Value) -> Option<Self> {
        let typed = serde_json::from_value(sel.clone()).ok()?;
        labels::from_label_selector(&typed).map(Self)
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        if self.0.selects_all() {
            return true;
        }
        self.matches_map(&string_labels(labels))
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.selects_all() || self.0.matches(labels)
    }

    /// The one value this selector requires `key` to equal (`key=value`), if any.
    pub fn required_value(&self, key: &str) -> Option<String> {
        self.0.clone().into_iter().find_map(|e| match e {
            labels::Expression::Equal(k, v) if k == key => Some(v),
            _ => None,
        })
    }
}

/// The string-valued labels of an object's `metadata.labels`.
pub fn string_labels(labels: Option<&Map<String, Value>>) -> BTreeMap<String, String> {
    labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// `a=b,c in (d)` — the form `kubectl` shows a workload's `spec.selector` in (a Scale's
/// `status.selector`, wide columns).
pub fn selector_string(sel: &Value) -> String {
    LabelSelector::from_label_selector(sel)
        .map(|s| s.0.to_string())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str, r: &ResourceInfo) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !r.strategy.selectable_fields().contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The single name this selector pins, if any (`metadata.name=x`).
    pub fn name(&self) -> Option<&str> {
        self.required_value("metadata.name")
    }

    /// The one value this selector requires `field` to equal (`field=value`), if any.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_with(|field| field_value(obj, field))
    }

    /// As [`FieldSelector::matches`], with the fields' values given by `value_of`.
    pub fn matches_with(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.0
            .iter()
            .all(|(field, eq, want)| (value_of(field) == *want) == *eq)
    }
}

/// The value of a selectable field of an object, as field selectors compare it (absent and null
/// are the empty string).
pub fn field_value(obj: &Value, field: &str) -> String {
    let got = if field == "source" {
        obj.pointer("/source/component")
    } else {
        let ptr = format!("/{}", field.replace('.', "/"));
        obj.pointer(&ptr)
    };
    match got {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_forms() {
        let labels = json!({"app": "web", "tier": "front"});
        let l = labels.as_object();
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("!missing,app in (web)", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(l), want, "{sel}");
        }
        assert!(LabelSelector::parse("a in b").is_err());
    }

    fn pods() -> &'static ResourceInfo {
        crate::resources::find("", "v1", "pods").unwrap()
    }

    #[test]
    fn field_selector_forms() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", pods()).unwrap();
        assert!(f.matches(&pod));
        let f = FieldSelector::parse("spec.nodeName=", pods()).unwrap();
        assert!(!f.matches(&pod));
        assert!(FieldSelector::parse("spec.bogus=1", pods()).is_err());
        assert_eq!(
            FieldSelector::parse(
                "metadata.name=p",
                crate::resources::find("", "v1", "configmaps").unwrap()
            )
            .unwrap()
            .name(),
            Some("p")
        );
    }
}
