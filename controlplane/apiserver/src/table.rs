//! Server-side printing: `meta.k8s.io/v1` Table responses with the columns `kubectl get` shows
//! against a real cluster (priority 1 columns appear with `-o wide`).

use serde_json::{Value, json};

use super::resources::ResourceInfo;
use super::selectors::selector_string;

/// Kubernetes' short human duration (`5s`, `3m2s`, `4h`, `12d`, `2y3d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(ts: Option<&Value>) -> String {
    match ts
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

pub(crate) fn age(o: &Value) -> Value {
    json!(age_of(o.pointer("/metadata/creationTimestamp")))
}

pub(crate) fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

pub(crate) fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn or_none(v: String) -> Value {
    if v.is_empty() {
        json!("<none>")
    } else {
        json!(v)
    }
}

pub(crate) fn arr<'a>(o: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A Table column: (name, type, priority, description).
pub type Column = (&'static str, &'static str, u8, &'static str);

pub(crate) const NAME: Column = (
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
pub(crate) const AGE: Column = (
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The columns of [`template_cells`]' first two cells (the selector's column is described per
/// resource).
pub(crate) const CONTAINERS: Column = (
    "Containers",
    "string",
    1,
    "Names of each container in the template.",
);
pub(crate) const IMAGES: Column = (
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);

pub(crate) fn template_cells(o: &Value) -> [Value; 3] {
    let cs: Vec<&Value> = arr(o, "/spec/template/spec/containers").collect();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    let sel = o
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    [
        json!(names.join(",")),
        json!(images.join(",")),
        or_none(sel),
    ]
}

pub(crate) fn service_ports(o: &Value) -> String {
    let ps: Vec<String> = arr(o, "/spec/ports")
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    if ps.is_empty() {
        "<none>".into()
    } else {
        ps.join(",")
    }
}

pub(crate) fn external_ip(o: &Value) -> String {
    let ty = s(o, "/spec/type");
    let ext: Vec<&str> = arr(o, "/spec/externalIPs")
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = arr(o, "/status/loadBalancer/ingress")
                .map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            ips.extend(ext.iter().map(|s| s.to_string()));
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if !ext.is_empty() => ext.join(","),
        _ => "<none>".into(),
    }
}

pub(crate) fn event_time(o: &Value, ptrs: &[&str]) -> String {
    for p in ptrs {
        if let Some(v) = o.pointer(p).filter(|v| v.is_string()) {
            return age_of(Some(v));
        }
    }
    "<unknown>".into()
}

fn row_object(o: &Value, include: Option<&str>) -> Option<Value> {
    match include {
        Some("None") => None,
        Some("Object") => Some(o.clone()),
        _ => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        })),
    }
}

/// A Table of `objs`.
pub fn table_for_objects(
    r: &ResourceInfo,
    objs: &[Value],
    rv: &str,
    include: Option<&str>,
) -> Value {
    let defs: Vec<Value> = r.strategy.columns()
        .into_iter()
        .map(|(name, ty, prio, desc)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": desc, "priority": prio})
        })
        .collect();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": r.strategy.cells(o)});
            if let Some(obj) = row_object(o, include) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// A Table of a list response (keeping its `continue`).
pub fn table_for_list(r: &ResourceInfo, list: &Value, include: Option<&str>) -> Value {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut t = table_for_objects(r, &items, rv, include);
    if let Some(c) = list.pointer("/metadata/continue") {
        t["metadata"]["continue"] = c.clone();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (20 * 86400, "20d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn controller_revision_rows_name_the_controller_with_its_group() {
        let r = crate::resources::find("apps", "v1", "controllerrevisions").unwrap();
        let owned = json!({"metadata": {"name": "ds-5d4b", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "u", "controller": true}]},
            "revision": 3});
        let c = r.strategy.cells(&owned);
        assert_eq!(
            c[..3],
            [json!("ds-5d4b"), json!("daemonset.apps/ds"), json!(3)]
        );
        let orphan = json!({"metadata": {"name": "x"}, "revision": 1});
        assert_eq!(r.strategy.cells(&orphan)[1], "<none>");
    }

    #[test]
    fn pod_and_service_rows() {
        let r = crate::resources::find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [{"ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        let c = r.strategy.cells(&pod);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "ContainerCreating");
        assert_eq!(c[6], "n1");
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        assert_eq!(service_ports(&svc), "80:30080/TCP");
        assert_eq!(external_ip(&svc), "<none>");
    }
}
