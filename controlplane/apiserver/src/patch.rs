//! The three patch formats of `kubectl patch` and `kubectl apply`: JSON patch (RFC 6902) and
//! JSON merge patch (RFC 7386) through the json-patch crate, and strategic merge patch, which no
//! crate implements: ours, driven by the schemas' merge keys and patch strategies, with the
//! directives kubectl's 3-way patches use (`$patch: replace|delete|merge`, `$retainKeys`,
//! `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`).

use std::collections::{HashMap, HashSet};

use json_patch::PatchOperation;
use serde_json::{Map, Value};

use super::schema::{FieldKind, Schemas};
use super::status::ApiError;

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
    /// The patch asks for more work or memory than the server grants one request.
    #[error("{0}")]
    TooLarge(String),
}

impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::Invalid(m) => ApiError::bad_request(m),
            PatchError::TooLarge(m) => ApiError::too_large(m),
        }
    }
}

/// Most operations one JSON patch may hold, as kube-apiserver allows.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes the values a JSON patch's `add`, `replace` and `copy` operations may add up to
/// (kube-apiserver gives json-patch's AccumulatedCopySizeLimit its request body limit). Without
/// it, each `copy` of a list into itself doubles the document: 52 of them ask for petabytes.
pub const MAX_JSON_PATCH_ACCUMULATED_BYTES: usize = crate::limits::MAX_REQUEST_BODY_BYTES;

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let count = patch.as_array().map_or(0, Vec::len);
    if count > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}"
        )));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Invalid(e.to_string()))?;
    let mut out = target.clone();
    let mut accumulated = 0usize;
    for (i, op) in ops.0.iter().enumerate() {
        let added = match op {
            PatchOperation::Add(a) => Some(&a.value),
            PatchOperation::Replace(r) => Some(&r.value),
            PatchOperation::Copy(c) => out.pointer(c.from.as_str()),
            _ => None,
        };
        if let Some(v) = added {
            let budget = MAX_JSON_PATCH_ACCUMULATED_BYTES - accumulated;
            accumulated += encoded_len_within(v, budget).ok_or_else(|| {
                PatchError::TooLarge(format!(
                    "JSON patch operation {i} ({}) would make the values the patch adds and copies exceed {MAX_JSON_PATCH_ACCUMULATED_BYTES} bytes",
                    op.path()
                ))
            })?;
        }
        // `out` is thrown away on failure: no undo log is needed.
        json_patch::patch_unsafe(&mut out, std::slice::from_ref(op)).map_err(|e| {
            PatchError::Invalid(format!(
                "JSON patch operation {i} failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
    }
    Ok(out)
}

/// The length of `v` encoded as JSON, or `None` as soon as it passes `budget`: measuring a
/// value never costs more than the budget it is measured against.
fn encoded_len_within(v: &Value, budget: usize) -> Option<usize> {
    struct Counter {
        n: usize,
        budget: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.budget {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, budget };
    serde_json::to_writer(&mut c, v).ok()?;
    Some(c.n)
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
        let keep: HashSet<&str> = keep.into_iter().collect();
        out.retain(|k, _| keep.contains(k.as_str()));
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
            let del: HashSet<String> = pv.as_array().into_iter().flatten().map(identity).collect();
            if let Some(list) = out.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !del.contains(&identity(x)));
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

/// A value's identity for set operations: its JSON text (`Value` has no `Hash`). Lists are
/// merged through these maps so that a hostile patch with huge lists costs linear time.
fn identity(v: &Value) -> String {
    v.to_string()
}

/// The identity of a list element's merge key, if it has one.
fn key_identity(v: &Value, key: &str) -> Option<String> {
    v.get(key).map(identity)
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
    let orig: Vec<Value> = if replace {
        Vec::new()
    } else {
        orig.as_array().cloned().unwrap_or_default()
    };
    if key.is_empty() {
        // A set of scalars: union.
        let mut seen: HashSet<String> = orig.iter().map(identity).collect();
        let mut out = orig;
        for p in patch_items {
            if seen.insert(identity(p)) {
                out.push(p.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    // Deleted elements leave a hole until the end, so indexes stay valid.
    let mut out: Vec<Option<Value>> = orig.into_iter().map(Some).collect();
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, o) in out.iter().enumerate() {
        if let Some(k) = o.as_ref().and_then(|o| key_identity(o, key)) {
            by_key.entry(k).or_default().push(i);
        }
    }
    for p in patch_items {
        let Some(pm) = p.as_object() else {
            return Err(PatchError::Invalid(format!(
                "list items must be objects with merge key {key:?}"
            )));
        };
        let pk = key_identity(p, key);
        match directive(pm) {
            Some("replace") if pm.len() == 1 => continue,
            Some("delete") => {
                for i in pk.and_then(|k| by_key.remove(&k)).unwrap_or_default() {
                    out[i] = None;
                }
                continue;
            }
            _ => {}
        }
        let found = pk
            .as_ref()
            .and_then(|k| by_key.get(k))
            .and_then(|is| is.first().copied());
        match found {
            Some(i) => {
                let merged =
                    merge_object(schemas, item, out[i].as_ref().unwrap_or(&Value::Null), p)?;
                if merged.is_none()
                    && let Some(is) = pk.as_ref().and_then(|k| by_key.get_mut(k))
                {
                    is.remove(0);
                }
                out[i] = merged;
            }
            None => {
                if let Some(v) = merge_object(schemas, item, &Value::Null, p)? {
                    if let Some(k) = key_identity(&v, key) {
                        by_key.entry(k).or_default().push(out.len());
                    }
                    out.push(Some(v));
                }
            }
        }
    }
    Ok(Value::Array(out.into_iter().flatten().collect()))
}

fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let of = |v: &Value| match key {
        Some(k) if !k.is_empty() => key_identity(v, k),
        _ => Some(identity(v)),
    };
    let mut positions: HashMap<String, usize> = HashMap::new();
    for (i, o) in order.iter().enumerate() {
        if let Some(id) = of(o) {
            positions.entry(id).or_insert(i);
        }
    }
    // Stable: elements named in the order first, in that order; the rest keep their places after.
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| {
            let p = of(&v).and_then(|id| positions.get(&id).copied());
            (p.unwrap_or(usize::MAX), i, v)
        })
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

    /// The patch of the issue: a list copied into itself 52 times asks for 2^52 copies.
    fn doubling_patch(copies: usize) -> Value {
        let mut ops = vec![json!({"op": "add", "path": "/t", "value": ["x".repeat(1000)]})];
        ops.extend((0..copies).map(|_| json!({"op": "copy", "from": "/t", "path": "/t/-"})));
        Value::Array(ops)
    }

    #[test]
    fn json_patch_copies_are_bounded() {
        let e = json_patch(&json!({}), &doubling_patch(52)).unwrap_err();
        assert!(matches!(e, PatchError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("operation 12"), "{e}");
        // A few doublings stay within the budget.
        let out = json_patch(&json!({}), &doubling_patch(5)).unwrap();
        assert_eq!(out["t"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn json_patch_operations_are_bounded() {
        let op = json!({"op": "test", "path": "", "value": {}});
        let e = json_patch(&json!({}), &Value::Array(vec![op; 10_001])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
        let e = json_patch(
            &json!({"a": 1}),
            &json!([{"op": "add", "path": "/a", "value": 2}, {"op": "remove", "path": "/b"}]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("JSON patch operation 1 failed at path '/b'"),
            "{e}"
        );
    }

    #[test]
    fn strategic_lists_merge_in_linear_time() {
        // 50,000 scalars into a set of 50,000: quadratic would be 2.5e9 comparisons.
        let s = Schemas::generate();
        let n = 50_000;
        let cur = json!({"metadata": {"finalizers": (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>()}});
        let p = json!({"metadata": {
            "finalizers": (n / 2..n + n / 2).map(|i| format!("f{i}")).collect::<Vec<_>>(),
            "$deleteFromPrimitiveList/finalizers": (0..n / 2).map(|i| format!("f{i}")).collect::<Vec<_>>(),
        }});
        let out = strategic_merge_patch(&s, DEPLOY, &cur, &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"].as_array().unwrap().len(), n);
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
