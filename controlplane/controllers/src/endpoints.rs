//! The Endpoints and EndpointSlice controllers (one reconcile, two outputs): for every Service
//! with a selector, the pods it selects that have an address, ready or not (a not-ready pod counts
//! as ready with `publishNotReadyAddresses`), with each Service port's `targetPort` resolved —
//! by name against the pod's container ports. Endpoints groups addresses by resolved port set;
//! EndpointSlices carry up to 100 endpoints per port set and per IP family of the Service
//! (`addressType` IPv4 or IPv6, from the pods' `status.podIPs` of that family; Endpoints only
//! the primary family's, as kube-controller-manager), labelled with the Service's name and owned
//! by it, updated in place and only when they change.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::pods::is_ready;
use super::{Context, ControllerError, controller_ref, drive, error_policy, is_not_found};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_PER_SLICE: usize = 100;

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "endpoint-controller");
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let stream = controller
        .owns(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                services
                    .state()
                    .iter()
                    .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|s| {
                        s.spec
                            .as_ref()
                            .and_then(|sp| sp.selector.as_ref())
                            .is_some_and(|sel| {
                                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                            })
                    })
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx);
    drive("endpoints", stream).await;
}

/// One Service port resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

/// The Service's ports as this pod serves them; a named targetPort the pod lacks is left out.
fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<Port> {
    let container_ports: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let mut out: Vec<Port> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|sp| {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = match &sp.target_port {
                None => sp.port,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => *p,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => {
                    container_ports
                        .iter()
                        .find(|cp| {
                            cp.name.as_deref() == Some(name.as_str())
                                && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                        })?
                        .container_port
                }
            };
            Some(Port {
                name: sp.name.clone().unwrap_or_default(),
                port,
                protocol,
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    out.sort();
    out
}

struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    ready: bool,
    terminating: bool,
}

fn target_ref(p: &Pod) -> Value {
    json!({"kind": "Pod", "namespace": p.namespace(), "name": p.name_any(), "uid": p.metadata.uid})
}

fn node_name(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn endpoints_subsets(groups: &Groups<'_>) -> Value {
    let mut subsets = Vec::new();
    for (ports, members) in groups {
        let addr = |m: &Member<'_>| json!({"ip": m.ip, "nodeName": node_name(m.pod), "targetRef": target_ref(m.pod)});
        let ready: Vec<Value> = members
            .iter()
            .filter(|m| m.ready && !m.terminating)
            .map(addr)
            .collect();
        let not_ready: Vec<Value> = members
            .iter()
            .filter(|m| !m.ready && !m.terminating)
            .map(addr)
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut s = json!({"ports": ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>()});
        if !ready.is_empty() {
            s["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            s["notReadyAddresses"] = json!(not_ready);
        }
        subsets.push(s);
    }
    json!(subsets)
}

fn slice_body(ports: &[Port], members: &[&Member<'_>]) -> (Value, Value) {
    let endpoints: Vec<Value> = members
        .iter()
        .map(|m| {
            let mut e = json!({
                "addresses": [m.ip],
                "conditions": {"ready": m.ready && !m.terminating, "serving": m.ready, "terminating": m.terminating},
                "targetRef": target_ref(m.pod),
            });
            if let Some(n) = node_name(m.pod) {
                e["nodeName"] = json!(n);
            }
            e
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"name": p.name, "port": p.port, "protocol": p.protocol});
            if let Some(a) = &p.app_protocol {
                v["appProtocol"] = json!(a);
            }
            v
        })
        .collect();
    (json!(endpoints), json!(ports))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        // Without a selector the endpoints are the user's to manage.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let label_selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&label_selector))
        .await?
        .items;
    let mut families = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    families.retain(|f| f == "IPv4" || f == "IPv6");
    if families.is_empty() {
        families.push("IPv4".into());
    }
    let per_family: Vec<(String, Groups<'_>)> = families
        .iter()
        .map(|f| (f.clone(), group_pods(&svc, &pods, f, publish_not_ready)))
        .collect();
    sync_endpoints(&ctx, &svc, &ns, &name, &per_family[0].1).await?;
    sync_slices(&ctx, &svc, &ns, &name, &per_family).await?;
    Ok(Action::await_change())
}

type Groups<'a> = BTreeMap<Vec<Port>, Vec<Member<'a>>>;

/// The pods' addresses of `family` (`IPv4` or `IPv6`), grouped by the ports they serve.
fn group_pods<'a>(
    svc: &Service,
    pods: &'a [Pod],
    family: &str,
    publish_not_ready: bool,
) -> Groups<'a> {
    let mut groups: Groups<'a> = BTreeMap::new();
    for p in pods {
        let Some(status) = p.status.as_ref() else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let listed = status.pod_ips.iter().flatten().map(|a| a.ip.clone());
        let ip = listed
            .chain(status.pod_ip.clone())
            .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
            .find(|ip| (family == "IPv6") == ip.is_ipv6());
        let Some(ip) = ip else { continue };
        groups
            .entry(resolve_ports(svc, p))
            .or_default()
            .push(Member {
                pod: p,
                ip: ip.to_string(),
                ready: publish_not_ready || is_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
            });
    }
    for members in groups.values_mut() {
        members.sort_by(|a, b| {
            a.ip.cmp(&b.ip)
                .then_with(|| a.pod.name_any().cmp(&b.pod.name_any()))
        });
    }
    groups
}

async fn sync_endpoints(
    ctx: &Context,
    svc: &Service,
    ns: &str,
    name: &str,
    groups: &Groups<'_>,
) -> Result<(), ControllerError> {
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let subsets = endpoints_subsets(groups);
    let labels = svc.labels().clone();
    match api.get_opt(name).await? {
        Some(cur) => {
            let cur_subsets =
                serde_json::to_value(cur.subsets.clone().unwrap_or_default()).unwrap_or_default();
            let want: Vec<k8s_openapi::api::core::v1::EndpointSubset> =
                serde_json::from_value(subsets.clone()).unwrap_or_default();
            if cur_subsets == serde_json::to_value(&want).unwrap_or_default()
                && cur.labels() == &labels
            {
                return Ok(());
            }
            let patch = json!({"metadata": {"labels": labels}, "subsets": subsets});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        None => {
            let ep: Endpoints = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "subsets": subsets,
            }))
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn sync_slices(
    ctx: &Context,
    svc: &Service,
    ns: &str,
    name: &str,
    per_family: &[(String, Groups<'_>)],
) -> Result<(), ControllerError> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let mut existing = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let mut labels = svc.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), name.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = controller_ref(svc);
    // A slice's addressType cannot change: each family's slices are matched with its own.
    let mut kept = Vec::new();
    for (family, groups) in per_family {
        let mine: Vec<&EndpointSlice> = existing
            .iter()
            .filter(|s| &s.address_type == family)
            .collect();
        let mut desired: Vec<(Value, Value)> = Vec::new();
        for (ports, members) in groups {
            let refs: Vec<&Member<'_>> = members.iter().collect();
            for chunk in refs.chunks(MAX_PER_SLICE) {
                desired.push(slice_body(ports, chunk));
            }
        }
        if desired.is_empty() {
            // A Service with no endpoints still gets one empty slice.
            desired.push((json!([]), json!([])));
        }
        kept.extend(mine.iter().take(desired.len()).map(|s| s.name_any()));
        write_slices(&api, ns, name, family, &labels, &owner, &mine, &desired).await?;
    }
    for extra in existing.iter().filter(|s| !kept.contains(&s.name_any())) {
        match api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Brings one family's slices (`existing`) to `desired`, in place where one exists.
#[allow(clippy::too_many_arguments)]
async fn write_slices(
    api: &Api<EndpointSlice>,
    ns: &str,
    name: &str,
    family: &str,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
    existing: &[&EndpointSlice],
    desired: &[(Value, Value)],
) -> Result<(), ControllerError> {
    for (i, (endpoints, ports)) in desired.iter().enumerate() {
        match existing.get(i) {
            Some(cur) => {
                let cur_v = serde_json::to_value(cur).unwrap_or_default();
                let want_eps: Vec<k8s_openapi::api::discovery::v1::Endpoint> =
                    serde_json::from_value(endpoints.clone()).unwrap_or_default();
                let want_ports: Vec<k8s_openapi::api::discovery::v1::EndpointPort> =
                    serde_json::from_value(ports.clone()).unwrap_or_default();
                let same = cur_v.get("endpoints").cloned().unwrap_or(json!([]))
                    == serde_json::to_value(&want_eps).unwrap_or_default()
                    && cur_v.get("ports").cloned().unwrap_or(json!([]))
                        == serde_json::to_value(&want_ports).unwrap_or_default()
                    && cur.labels() == labels;
                if same {
                    continue;
                }
                let patch =
                    json!({"metadata": {"labels": labels}, "endpoints": endpoints, "ports": ports});
                api.patch(
                    &cur.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            None => {
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": labels, "ownerReferences": [owner]},
                    "addressType": family,
                    "endpoints": endpoints,
                    "ports": ports,
                }))
                .map_err(|e| ControllerError::Invalid(e.to_string()))?;
                api.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc: Service = serde_json::from_value(json!({"spec": {"ports": [
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9100}]}}))
        .unwrap();
        let pod = |port: i32| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]}})).unwrap()
        };
        let ports = resolve_ports(&svc, &pod(8080));
        assert_eq!(
            ports
                .iter()
                .map(|p| (p.name.as_str(), p.port))
                .collect::<Vec<_>>(),
            [("metrics", 9100), ("web", 8080)]
        );
        let bare: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c"}]}})).unwrap();
        assert_eq!(resolve_ports(&svc, &bare).len(), 1);
    }

    #[test]
    fn each_family_takes_the_pods_addresses_of_its_own() {
        let svc: Service =
            serde_json::from_value(json!({"spec": {"ports": [{"port": 80}]}})).unwrap();
        let pod = |name: &str, ips: &[&str]| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ips[0],
                    "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}}))
            .unwrap()
        };
        let pods = [
            pod("dual", &["10.244.0.5", "fd00:244::5"]),
            pod("v4", &["10.244.0.6"]),
            pod("v6", &["fd00:244::7"]),
        ];
        let ips = |family: &str| -> Vec<String> {
            group_pods(&svc, &pods, family, true)
                .into_values()
                .flatten()
                .map(|m| m.ip)
                .collect()
        };
        assert_eq!(ips("IPv4"), ["10.244.0.5", "10.244.0.6"]);
        assert_eq!(ips("IPv6"), ["fd00:244::5", "fd00:244::7"]);
    }
}
