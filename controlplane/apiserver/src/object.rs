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
