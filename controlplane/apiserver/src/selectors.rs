//! Label selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`, parsed by skiff-k8s) and field selectors
//! (`metadata.name=x,spec.nodeName!=y`) as list and watch requests carry them.

use serde_json::{Map, Value};
use skiff_k8s::labels::{self, Expression, Selector};

use super::resources::ResourceInfo;
use super::status::ApiError;

/// A label selector (parsed by skiff-k8s into kube's expressions) applied to objects' labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Expression>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        labels::parse(s)
            .map(|s| Self(s.into_iter().collect()))
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// The selector a workload's `spec.selector` means; `None` when it is not a valid
    /// `LabelSelector` (a wrong type, an unknown operator).
    pub fn from_label_selector(sel: &Value) -> Option<Self> {
        let typed = serde_json::from_value(sel.clone()).ok()?;
        labels::from_label_selector(&typed).map(|s| Self(s.into_iter().collect()))
    }

    /// Whether an object with `metadata.labels` = `labels` is selected (labels whose value is
    /// not a string count as absent).
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_with(|key| labels?.get(key)?.as_str())
    }

    /// Whether an object whose label `key` has the value `label(key)` is selected.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(key, values) => label(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => label(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => label(key).is_some(),
            Expression::DoesNotExist(key) => label(key).is_none(),
            Expression::Equal(key, value) => label(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => label(key) != Some(value.as_str()),
        })
    }

    /// The one value this selector requires `key` to equal (`key=value`), if any.
    pub fn required_value(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|e| match e {
            Expression::Equal(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }
}

/// An object's string-valued labels, compact and sorted by key, as the watch cache keeps them
/// for every object (a map would cost a node allocation of eleven entries per object).
#[derive(Debug, Default)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn of(labels: Option<&Map<String, Value>>) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = labels
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self(pairs.into_boxed_slice())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }
}

/// `a=b,c in (d)` — the form `kubectl` shows a workload's `spec.selector` in (a Scale's
/// `status.selector`, wide columns).
pub fn selector_string(sel: &Value) -> String {
    LabelSelector::from_label_selector(sel)
        .map(|s| Selector::from_iter(s.0).to_string())
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
    pub fn matches_with<V: AsRef<str>>(&self, value_of: impl Fn(&str) -> V) -> bool {
        self.0
            .iter()
            .all(|(field, eq, want)| (value_of(field).as_ref() == want) == *eq)
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

    #[test]
    fn compact_labels_answer_as_the_object_does() {
        let object = json!({"b": "2", "a": "1", "n": 3, "c": "3"});
        let labels = Labels::of(object.as_object());
        assert_eq!(
            ["a", "b", "c", "n", "z"].map(|k| labels.get(k)),
            [Some("1"), Some("2"), Some("3"), None, None]
        );
        for sel in [
            "a=1,b in (2)",
            "n",
            "!n,c notin (4)",
            "z!=1",
            "a=2",
            "b notin (2)",
        ] {
            let sel = LabelSelector::parse(sel).unwrap();
            assert_eq!(
                sel.matches_with(|k| labels.get(k)),
                sel.matches(object.as_object()),
                "{sel:?}"
            );
        }
        assert!(Labels::of(None).get("a").is_none());
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
