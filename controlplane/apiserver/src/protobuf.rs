//! Decoding of `application/vnd.kubernetes.protobuf` request bodies. kubectl's typed clients
//! (`kubectl create namespace|configmap|secret|deployment|service|job…`) send them and client-go
//! never falls back to JSON, so the server must read them. Responses are always JSON, which
//! client-go decodes by the response's Content-Type.
//!
//! No crate maps Kubernetes protobuf to the JSON form, so this is a small wire-format reader
//! driven by a table of field numbers (`protobuf_fields.rs`, generated from the k8s-pb crate's
//! declarations) and the JSON field names of our schemas. The envelope is the 4-byte magic
//! `k8s\0` followed by a `runtime.Unknown` (typeMeta, raw, contentEncoding, contentType).

use base64::Engine;
use serde_json::{Map, Value, json};

use super::protobuf_fields::MESSAGES;

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Bytes,
    I32,
    I64,
    Bool,
    F64,
    Msg(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub enum Card {
    One,
    Many,
    /// A map with string keys; `ty` is the value type.
    Map,
}

#[derive(Debug)]
pub struct F {
    pub tag: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub card: Card,
}

const MAGIC: &[u8] = b"k8s\0";
/// How Go's zero `metav1.Time` arrives.
const ZERO_TIME: &str = "1970-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
#[error("protobuf body: {0}")]
pub struct ProtobufError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProtobufError> {
    Err(ProtobufError(msg.into()))
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return err("truncated varint");
            };
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if self.buf.len() < n {
            return err("truncated field");
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = (key >> 3) as u32;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            2 => {
                let n = self.varint()? as usize;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            w => return err(format!("unsupported wire type {w}")),
        };
        Ok(Some((tag, wire)))
    }
}

fn fields_of(msg: &str) -> Option<&'static [F]> {
    MESSAGES
        .binary_search_by(|(name, _)| (*name).cmp(msg))
        .ok()
        .map(|i| MESSAGES[i].1)
}

fn scalar(ty: Ty, w: Wire) -> Result<Value, ProtobufError> {
    Ok(match (ty, w) {
        (Ty::Str, Wire::Bytes(b)) => Value::String(
            String::from_utf8(b.to_vec()).map_err(|_| ProtobufError("invalid UTF-8".into()))?,
        ),
        (Ty::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::I32, Wire::Varint(v)) => json!(v as i64 as i32),
        (Ty::I64, Wire::Varint(v)) => json!(v as i64),
        (Ty::Bool, Wire::Varint(v)) => json!(v != 0),
        (Ty::F64, Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        (Ty::Msg(m), Wire::Bytes(b)) => message(m, b)?,
        (ty, _) => return err(format!("wire type does not match {ty:?}")),
    })
}

/// Decodes one message of type `msg` to its JSON form.
pub fn message(msg: &str, buf: &[u8]) -> Result<Value, ProtobufError> {
    match msg {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            let mut r = Reader { buf };
            while let Some((tag, w)) = r.field()? {
                match (tag, w) {
                    (1, Wire::Varint(v)) => secs = v as i64,
                    (2, Wire::Varint(v)) => nanos = i64::from(v as i64 as i32),
                    _ => {}
                }
            }
            let t = chrono::DateTime::from_timestamp(secs, nanos as u32)
                .ok_or_else(|| ProtobufError("time out of range".into()))?;
            let fmt = if msg.ends_with("MicroTime") {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            return Ok(json!(t.format(fmt).to_string()));
        }
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut ty, mut int, mut s) = (0u64, 0i64, String::new());
            let mut r = Reader { buf };
            while let Some((tag, w)) = r.field()? {
                match (tag, w) {
                    (1, Wire::Varint(v)) => ty = v,
                    (2, Wire::Varint(v)) => int = i64::from(v as i64 as i32),
                    (3, Wire::Bytes(b)) => s = String::from_utf8_lossy(b).into_owned(),
                    _ => {}
                }
            }
            return Ok(if ty == 1 { json!(s) } else { json!(int) });
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            let mut r = Reader { buf };
            while let Some((tag, w)) = r.field()? {
                if let (1, Wire::Bytes(b)) = (tag, w) {
                    return Ok(json!(String::from_utf8_lossy(b)));
                }
            }
            return Ok(json!("0"));
        }
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let mut r = Reader { buf };
            while let Some((tag, w)) = r.field()? {
                if let (1, Wire::Bytes(b)) = (tag, w) {
                    return serde_json::from_slice(b)
                        .map_err(|e| ProtobufError(format!("embedded JSON: {e}")));
                }
            }
            return Ok(json!({}));
        }
        "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => {
            let mut r = Reader { buf };
            while let Some((tag, w)) = r.field()? {
                if let (1, Wire::Varint(v)) = (tag, w) {
                    let d = v as i64;
                    return Ok(json!(format!("{}s", d as f64 / 1e9)));
                }
            }
            return Ok(json!("0s"));
        }
        _ => {}
    }
    let fields =
        fields_of(msg).ok_or_else(|| ProtobufError(format!("type {msg} is not supported")))?;
    let mut out = Map::new();
    let mut r = Reader { buf };
    while let Some((tag, w)) = r.field()? {
        let Some(f) = fields.iter().find(|f| f.tag == tag) else {
            return err(format!("{msg}: unknown field number {tag}"));
        };
        match f.card {
            Card::One => {
                let v = scalar(f.ty, w)?;
                // Go writes every non-pointer field, zero or not; its JSON form omits zero
                // values, and defaulting treats them as unset. (A pointer explicitly set to zero
                // is indistinguishable here; `replicas` is the one that matters.)
                let zero = match &v {
                    Value::String(s) => s.is_empty() || s == ZERO_TIME,
                    Value::Number(n) => n.as_f64() == Some(0.0) && f.name != "replicas",
                    Value::Bool(b) => !b,
                    _ => false,
                };
                if zero {
                    out.remove(f.name);
                } else {
                    out.insert(f.name.to_string(), v);
                }
            }
            Card::Many => {
                let list = out
                    .entry(f.name.to_string())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("list");
                match (f.ty, w) {
                    // Packed scalars.
                    (Ty::I32 | Ty::I64 | Ty::Bool, Wire::Bytes(b)) => {
                        let mut pr = Reader { buf: b };
                        while !pr.buf.is_empty() {
                            list.push(scalar(f.ty, Wire::Varint(pr.varint()?))?);
                        }
                    }
                    (ty, w) => list.push(scalar(ty, w)?),
                }
            }
            Card::Map => {
                let Wire::Bytes(entry) = w else {
                    return err(format!(
                        "{msg}.{}: map entry is not length-delimited",
                        f.name
                    ));
                };
                let mut er = Reader { buf: entry };
                let (mut key, mut value) = (String::new(), None);
                while let Some((etag, ew)) = er.field()? {
                    match (etag, ew) {
                        (1, Wire::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, v) => value = Some(scalar(f.ty, v)?),
                        _ => {}
                    }
                }
                let value = value.unwrap_or(match f.ty {
                    Ty::Str | Ty::Bytes => json!(""),
                    Ty::Msg(_) => json!({}),
                    _ => json!(0),
                });
                out.entry(f.name.to_string())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("map")
                    .insert(key, value);
            }
        }
    }
    Ok(Value::Object(out))
}

fn package(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "io.k8s.api.core",
        "apps" => "io.k8s.api.apps",
        "batch" => "io.k8s.api.batch",
        "coordination.k8s.io" => "io.k8s.api.coordination",
        "discovery.k8s.io" => "io.k8s.api.discovery",
        "events.k8s.io" => "io.k8s.api.events",
        "autoscaling" => "io.k8s.api.autoscaling",
        "policy" => "io.k8s.api.policy",
        "scheduling.k8s.io" => "io.k8s.api.scheduling",
        "rbac.authorization.k8s.io" => "io.k8s.api.rbac",
        "authentication.k8s.io" => "io.k8s.api.authentication",
        "authorization.k8s.io" => "io.k8s.api.authorization",
        "certificates.k8s.io" => "io.k8s.api.certificates",
        "meta.k8s.io" => "io.k8s.apimachinery.pkg.apis.meta",
        _ => return None,
    })
}

/// Decodes a protobuf request body (envelope and object) to the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return err("missing the k8s protobuf envelope");
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut r = Reader { buf: rest };
    while let Some((tag, w)) = r.field()? {
        match (tag, w) {
            (1, Wire::Bytes(tm)) => {
                let mut tr = Reader { buf: tm };
                while let Some((t, w)) = tr.field()? {
                    match (t, w) {
                        (1, Wire::Bytes(b)) => {
                            api_version = String::from_utf8_lossy(b).into_owned()
                        }
                        (2, Wire::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(b)) if !b.is_empty() => {
                return err(format!(
                    "content encoding {:?} is not supported",
                    String::from_utf8_lossy(b)
                ));
            }
            _ => {}
        }
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    let pkg = if kind == "DeleteOptions" {
        Some("io.k8s.apimachinery.pkg.apis.meta")
    } else {
        package(group)
    };
    let pkg = pkg.ok_or_else(|| ProtobufError(format!("group {group:?} is not supported")))?;
    let mut obj = message(&format!("{pkg}.{version}.{kind}"), raw)?;
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag << 3 | 2), out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(MESSAGES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn decodes_a_configmap_in_its_envelope() {
        // ObjectMeta{name: "c", labels: {a: b}}
        let mut meta = Vec::new();
        bytes_field(1, b"c", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"a", &mut entry);
        bytes_field(2, b"b", &mut entry);
        bytes_field(11, &entry, &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        let mut data = Vec::new();
        bytes_field(1, b"k", &mut data);
        bytes_field(2, b"v", &mut data);
        bytes_field(2, &data, &mut cm);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"ConfigMap", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &cm, &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn decodes_a_controller_revision_with_its_raw_json_data() {
        let mut meta = Vec::new();
        bytes_field(1, b"ds-1", &mut meta);
        let mut raw = Vec::new();
        bytes_field(
            1,
            br#"{"spec":{"template":{"$patch":"replace"}}}"#,
            &mut raw,
        );
        let mut cr = Vec::new();
        bytes_field(1, &meta, &mut cr);
        bytes_field(2, &raw, &mut cr);
        varint(3 << 3, &mut cr);
        varint(2, &mut cr);
        let mut tm = Vec::new();
        bytes_field(1, b"apps/v1", &mut tm);
        bytes_field(2, b"ControllerRevision", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &cr, &mut body);
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "ds-1"},
                "data": {"spec": {"template": {"$patch": "replace"}}}, "revision": 2})
        );
    }
}
