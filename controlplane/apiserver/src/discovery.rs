//! Discovery as kubectl 1.32 asks for it: the aggregated `apidiscovery.k8s.io/v2` documents on
//! `/api` and `/apis` (requested first), the legacy `APIVersions`/`APIGroupList`/`APIGroup`/
//! `APIResourceList` documents, and `/version`.

use serde_json::{Value, json};

use super::metrics;
use super::resources::{RESOURCES, ResourceInfo, groups};

const METRICS_VERBS: [&str; 2] = ["get", "list"];

/// The aggregated document of `metrics.k8s.io`, which `metrics` serves without storing.
fn metrics_aggregated() -> Value {
    let resources: Vec<Value> = metrics::RESOURCES
        .iter()
        .map(|(plural, singular, kind, namespaced)| {
            json!({
                "resource": plural,
                "responseKind": {"group": metrics::GROUP, "version": metrics::VERSION, "kind": kind},
                "scope": if *namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": singular,
                "verbs": METRICS_VERBS,
            })
        })
        .collect();
    json!({
        "metadata": {"name": metrics::GROUP, "creationTimestamp": null},
        "versions": [{"version": metrics::VERSION, "resources": resources, "freshness": "Current"}],
    })
}

fn metrics_resource_list() -> Value {
    let resources: Vec<Value> = metrics::RESOURCES
        .iter()
        .map(|(plural, singular, kind, namespaced)| {
            json!({"name": plural, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": METRICS_VERBS})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{}/{}", metrics::GROUP, metrics::VERSION), "resources": resources})
}

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for the aggregated v2 document before anything else it lists.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|clause| {
        let parts: Vec<&str> = clause.split(';').map(str::trim).collect();
        parts.contains(&"g=apidiscovery.k8s.io")
            && parts.contains(&"v=v2")
            && parts.contains(&"as=APIGroupDiscoveryList")
    })
}

/// (subresource, group, version, kind, verbs)
fn subresource(
    r: &ResourceInfo,
    sub: &str,
) -> (&'static str, &'static str, &'static str, Vec<&'static str>) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale", vec!["get", "patch", "update"]),
        "binding" => ("", "v1", "Binding", vec!["create"]),
        "eviction" => ("policy", "v1", "Eviction", vec!["create"]),
        "finalize" => (r.group, r.version, r.kind, vec!["update"]),
        "token" => (
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            vec!["create"],
        ),
        "log" => ("", "v1", "Pod", vec!["get"]),
        "exec" => ("", "v1", "PodExecOptions", vec!["create", "get"]),
        "attach" => ("", "v1", "PodAttachOptions", vec!["create", "get"]),
        "portforward" => ("", "v1", "PodPortForwardOptions", vec!["create", "get"]),
        "proxy" => (
            "",
            "v1",
            "NodeProxyOptions",
            vec!["create", "delete", "get", "patch", "update"],
        ),
        _ => (r.group, r.version, r.kind, vec!["get", "patch", "update"]),
    }
}

fn in_gv(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
        .copied()
}

fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = in_gv(group, version)
        .map(|r| {
            let mut o = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.strategy.verbs(),
            });
            if !r.short_names.is_empty() {
                o["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                o["categories"] = json!(r.categories);
            }
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, v, k, verbs) = subresource(r, s);
                    json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
                })
                .collect();
            if !subs.is_empty() {
                o["subresources"] = json!(subs);
            }
            o
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({
        "metadata": meta,
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

/// The aggregated document of the core group (`/api`) or of the named groups (`/apis`).
pub fn aggregated(core: bool) -> Value {
    let mut items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, v)| aggregated_group(g, v))
        .collect();
    if !core {
        items.push(metrics_aggregated());
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn api_group(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    let mut groups: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| api_group(g, v))
        .collect();
    groups.push(api_group(metrics::GROUP, metrics::VERSION));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group_doc(group: &str) -> Option<Value> {
    let (g, v) = groups()
        .into_iter()
        .chain([(metrics::GROUP, metrics::VERSION)])
        .find(|(g, _)| *g == group && !g.is_empty())?;
    let mut doc = api_group(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (metrics::GROUP, metrics::VERSION) {
        return Some(metrics_resource_list());
    }
    if !groups().contains(&(group, version)) {
        return None;
    }
    let mut resources = Vec::new();
    for r in in_gv(group, version) {
        let mut o = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.strategy.verbs(),
        });
        if !r.short_names.is_empty() {
            o["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            o["categories"] = json!(r.categories);
        }
        resources.push(o);
        for s in r.subresources {
            let (g, v, k, verbs) = subresource(r, s);
            let mut so = json!({
                "name": format!("{}/{s}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": verbs,
            });
            if (g, v) != (r.group, r.version) {
                so["group"] = json!(g);
                so["version"] = json!(v);
            }
            resources.push(so);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-skiff.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_lists_short_names_and_categories() {
        let core = aggregated(true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        let apps = aggregated(false);
        assert!(
            apps["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["metadata"]["name"] == "apps")
        );
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }
}
