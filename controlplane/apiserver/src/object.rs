//! Objects as the API server handles them, JSON values: their metadata, and their stored
//! encoding (`metadata.resourceVersion` is not stored; it is the revision of the key).

use serde_json::{Map, Value, json};
use skiff_store::KeyValue;

use crate::resources::ResourceInfo;
use crate::status::{ApiError, ApiResult};

pub fn meta_str<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o.get("metadata")?.get(field)?.as_str()
}

pub fn meta_mut(o: &mut Value) -> &mut Map<String, Value> {
    if !o.is_object() {
        *o = json!({});
    }
    let m = o.as_object_mut().expect("object");
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    m.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("object")
}

/// A stored object, with `metadata.resourceVersion` set from its revision.
pub fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    meta_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

fn encode(o: &Value) -> Vec<u8> {
    let mut o = o.clone();
    meta_mut(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).expect("JSON values always serialise")
}

/// The stored bytes of an object served as `r`.
pub fn encode_for(r: &ResourceInfo, o: &Value) -> Vec<u8> {
    encode(&r.strategy.stored_form(o.clone()))
}

pub fn set_rv(o: &mut Value, rev: u64) {
    meta_mut(o).insert("resourceVersion".into(), json!(rev.to_string()));
}

/// Sets the field at the JSON pointer `field` (its parents made as objects), or removes it when
/// `value` is `None`.
pub fn set_pointer(o: &mut Value, field: &str, value: Option<Value>) {
    let (parent, last) = field.rsplit_once('/').unwrap_or(("", field));
    let Some(value) = value else {
        if let Some(m) = o.pointer_mut(parent).and_then(Value::as_object_mut) {
            m.remove(last);
        }
        return;
    };
    let mut at = o;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if !at.is_object() {
            *at = json!({});
        }
        at = at
            .as_object_mut()
            .expect("object")
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    if !at.is_object() {
        *at = json!({});
    }
    at.as_object_mut()
        .expect("object")
        .insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pointer_sets_makes_and_removes() {
        let mut o = json!({"spec": {"containers": []}});
        set_pointer(
            &mut o,
            "/spec/ephemeralContainers",
            Some(json!([{"name": "d"}])),
        );
        assert_eq!(o["spec"]["ephemeralContainers"][0]["name"], "d");
        set_pointer(&mut o, "/spec/ephemeralContainers", None);
        assert_eq!(o, json!({"spec": {"containers": []}}));
        let mut empty = json!({});
        set_pointer(&mut empty, "/a/b", Some(json!(1)));
        assert_eq!(empty, json!({"a": {"b": 1}}));
        set_pointer(&mut empty, "/x/y", None);
        assert_eq!(empty, json!({"a": {"b": 1}}));
    }
}
