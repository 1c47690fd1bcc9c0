//! The three patch formats of `kubectl patch` and `kubectl apply`: JSON patch (RFC 6902) and
//! JSON merge patch (RFC 7386) through the json-patch crate, and strategic merge patch, which no
//! crate implements: ours, driven by the schemas' merge keys and patch strategies, with the
//! directives kubectl's 3-way patches use (`$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`).

use serde_json::{Map, Value};

use super::schema::{FieldKind, Schemas};

/// A PATCH request's kind, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (or `+cbor`): server-side apply.
    Apply,
}

impl PatchType {
    /// `None` for a content type that is no patch.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Invalid(e.to_string()))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(out)
}

pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "merge patch must be a JSON object".into(),
        ));
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Applies a strategic merge patch to `target`, an object of definition `def`.
pub fn strategic_merge_patch(
    schemas: &Schemas,
    def: &str,
    target: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "strategic merge patch must be a JSON object".into(),
        ));
    }
    Ok(merge_object(schemas, Some(def), target, patch)?.unwrap_or(Value::Object(Map::new())))
}

fn directive(m: &Map<String, Value>) -> Option<&str> {
    m.get("$patch").and_then(Value::as_str)
}

/// Merges `patch` into `orig`; `None` means the object is to be deleted.
fn merge_object(
    schemas: &Schemas,
    def: Option<&str>,
    orig: &Value,
    patch: &Value,
) -> Result<Option<Value>, PatchError> {
    let Some(pm) = patch.as_object() else {
        return Ok(Some(patch.clone()));
    };
    match directive(pm) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            return Ok(Some(strip_directives(&Value::Object(m))));
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!("unknown patch type: {other}")));
        }
    }
    let mut out = orig.as_object().cloned().unwrap_or_default();
    if let Some(keys) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in pm {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match schemas.field(def, k) {
            FieldKind::List { item, merge_key } => {
                let ov = out.get(k).cloned().unwrap_or(Value::Array(vec![]));
                Some(merge_list(schemas, item.as_deref(), merge_key, &ov, pv)?)
            }
            FieldKind::Object(d) => {
                let ov = out.get(k).cloned().unwrap_or(Value::Null);
                merge_object(schemas, d.as_deref(), &ov, pv)?
            }
            FieldKind::Map(d) => {
                let ov = out.get(k).cloned().unwrap_or(Value::Null);
                match pv {
                    Value::Object(_) => merge_map(schemas, d.as_deref(), &ov, pv)?,
                    _ => Some(pv.clone()),
                }
            }
            FieldKind::Unknown if pv.is_object() => {
                let ov = out.get(k).cloned().unwrap_or(Value::Null);
                merge_object(schemas, None, &ov, pv)?
            }
            _ => Some(strip_directives(pv)),
        };
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let del: Vec<&Value> = pv.as_array().into_iter().flatten().collect();
            if let Some(list) = out.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !del.contains(&x));
            }
        }
    }
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            let key = match schemas.field(def, field) {
                FieldKind::List { merge_key, .. } => merge_key,
                _ => None,
            };
            if let (Some(list), Some(order)) = (
                out.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                reorder(list, order, key);
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

fn merge_map(
    schemas: &Schemas,
    def: Option<&str>,
    orig: &Value,
    patch: &Value,
) -> Result<Option<Value>, PatchError> {
    let mut out = orig.as_object().cloned().unwrap_or_default();
    for (k, pv) in patch.as_object().into_iter().flatten() {
        if pv.is_null() {
            out.remove(k);
        } else if def.is_some() {
            let ov = out.get(k).cloned().unwrap_or(Value::Null);
            match merge_object(schemas, def, &ov, pv)? {
                Some(v) => {
                    out.insert(k.clone(), v);
                }
                None => {
                    out.remove(k);
                }
            }
        } else {
            out.insert(k.clone(), pv.clone());
        }
    }
    Ok(Some(Value::Object(out)))
}

fn same_element(a: &Value, b: &Value, key: &str) -> bool {
    a.get(key).is_some() && a.get(key) == b.get(key)
}

fn merge_list(
    schemas: &Schemas,
    item: Option<&str>,
    merge_key: Option<&'static str>,
    orig: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Some(patch_items) = patch.as_array() else {
        return Ok(strip_directives(patch));
    };
    let Some(key) = merge_key else {
        // Atomic list: the patch replaces it.
        return Ok(strip_directives(patch));
    };
    let replace = patch_items
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"));
    let mut out: Vec<Value> = if replace {
        Vec::new()
    } else {
        orig.as_array().cloned().unwrap_or_default()
    };
    for p in patch_items {
        if key.is_empty() {
            // A set of scalars: union.
            if !out.contains(p) {
                out.push(p.clone());
            }
            continue;
        }
        let Some(pm) = p.as_object() else {
            return Err(PatchError::Invalid(format!(
                "list items must be objects with merge key {key:?}"
            )));
        };
        match directive(pm) {
            Some("replace") if pm.len() == 1 => continue,
            Some("delete") => {
                out.retain(|o| !same_element(o, p, key));
                continue;
            }
            _ => {}
        }
        match out.iter().position(|o| same_element(o, p, key)) {
            Some(i) => {
                if let Some(v) = merge_object(schemas, item, &out[i], p)? {
                    out[i] = v;
                } else {
                    out.remove(i);
                }
            }
            None => {
                if let Some(v) = merge_object(schemas, item, &Value::Null, p)? {
                    out.push(v);
                }
            }
        }
    }
    Ok(Value::Array(out))
}

fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let position = |v: &Value| {
        order.iter().position(|o| match key {
            Some(k) if !k.is_empty() => same_element(v, o, k),
            _ => v == o,
        })
    };
    // Stable: elements named in the order first, in that order; the rest keep their places after.
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (position(&v).unwrap_or(usize::MAX), i, v))
        .collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

/// Removes patch directives from a value that is being set wholesale.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPLOY: &str = "io.k8s.api.apps.v1.Deployment";

    fn deploy() -> Value {
        json!({"metadata": {"name": "w", "labels": {"a": "1"}, "finalizers": ["x"]},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
                   {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let s = Schemas::generate();
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}});
        let out = strategic_merge_patch(&s, DEPLOY, &deploy(), &p).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn directives() {
        let s = Schemas::generate();
        let p = json!({
            "metadata": {"labels": {"a": null, "b": "2"}, "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                "containers": [{"name": "app", "$patch": "delete"}]}}}});
        let out = strategic_merge_patch(&s, DEPLOY, &deploy(), &p).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["name"], "side");
        let replace = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}});
        let out = strategic_merge_patch(&s, DEPLOY, &deploy(), &replace).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
    }

    #[test]
    fn json_and_merge_patch() {
        let out = json_patch(
            &json!({"a": [1]}),
            &json!([{"op": "add", "path": "/a/-", "value": 2}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": [1, 2]}));
        let out = merge_patch(&json!({"a": 1, "b": 2}), &json!({"a": null, "c": 3})).unwrap();
        assert_eq!(out, json!({"b": 2, "c": 3}));
    }
}
