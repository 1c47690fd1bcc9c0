//! The files of configMap, secret, downwardAPI and projected volumes, computed from the pod and
//! the objects it refers to (already fetched): `items` (key → path, per-item mode), `defaultMode`,
//! `optional`, the downward API's fields in the kubelet's formats.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::VolumeError;
use super::atomic_writer::{FileProjection, Payload};
use crate::container_env::{self, NodeView};

/// The kubelet's default mode for projected files.
pub const DEFAULT_MODE: i32 = 0o644;

/// The ConfigMaps and Secrets of the pod's namespace the volumes name; `None` when absent.
#[derive(Debug, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Bound service-account tokens by (audience, lifetime).
    pub tokens: BTreeMap<super::service_account_token::TokenKey, String>,
}

/// The ConfigMap and Secret names the pod's volumes refer to.
pub fn referenced(volumes: &[Volume]) -> (Vec<String>, Vec<String>) {
    let mut cms = vec![];
    let mut secrets = vec![];
    for v in volumes {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &p.config_map {
                cms.push(c.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    (cms, secrets)
}

fn mode(m: Option<i32>, field: &str) -> Result<u32, VolumeError> {
    let m = m.unwrap_or(DEFAULT_MODE);
    if !(0..=0o777).contains(&m) {
        return Err(VolumeError::Invalid(format!(
            "{field}: mode {m:#o} must be between 0 and 0777"
        )));
    }
    Ok(m as u32)
}

/// The files of a ConfigMap or Secret's keys: all of them, or `items` (each key must exist unless
/// the source is optional).
fn keyed(
    kind: &'static str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            kind,
            name: name.to_string(),
        });
    };
    let default = mode(default_mode, "defaultMode")?;
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(
                    k,
                    FileProjection {
                        data: v,
                        mode: default,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    let what = if kind == "secret" { "secret" } else { "config" };
                    return Err(VolumeError::Invalid(format!(
                        "{kind} references non-existent {what} key: {}",
                        item.key
                    )));
                };
                let m = match item.mode {
                    Some(m) => mode(Some(m), &format!("items[{}].mode", item.key))?,
                    None => default,
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: m,
                    },
                );
            }
        }
    }
    Ok(())
}

fn config_map_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let cm = sources.config_maps.get(name)?.as_ref()?;
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        data.insert(k, v.0);
    }
    Some(data)
}

fn secret_data(sources: &Sources, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let s = sources.secrets.get(name)?.as_ref()?;
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    Some(data)
}

/// A map as the kubelet writes `metadata.labels`/`annotations`: sorted `key="value"` lines.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

fn downward(
    pod: &Pod,
    node: &NodeView,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let default = mode(default_mode, "defaultMode")?;
    let containers: Vec<&Container> = pod.spec.iter().flat_map(|s| &s.containers).collect();
    for item in items {
        let bad = |m: String| VolumeError::Invalid(format!("downwardAPI {}: {m}", item.path));
        let text = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                p if p.starts_with("metadata.") => {
                    container_env::field_value(pod, node, p).map_err(bad)?
                }
                p => return Err(bad(format!("fieldRef {p:?} is not supported in volumes"))),
            }
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let c = containers
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| bad(format!("no container {name:?}")))?;
            container_env::resource_value(c, node, &r.resource, r.divisor.as_ref()).map_err(bad)?
        } else {
            return Err(bad("neither fieldRef nor resourceFieldRef".into()));
        };
        let m = match item.mode {
            Some(m) => mode(Some(m), &format!("items[{}].mode", item.path))?,
            None => default,
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: text.into_bytes(),
                mode: m,
            },
        );
    }
    Ok(())
}

/// The files of a configMap, secret, downwardAPI or projected volume; `None` for other kinds.
pub fn payload(
    v: &Volume,
    pod: &Pod,
    node: &NodeView,
    sources: &Sources,
) -> Option<Result<Payload, VolumeError>> {
    let mut out = Payload::new();
    let result = if let Some(c) = &v.config_map {
        keyed(
            "configmap",
            &c.name,
            config_map_data(sources, &c.name),
            c.items.as_ref(),
            c.default_mode,
            c.optional.unwrap_or(false),
            &mut out,
        )
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        keyed(
            "secret",
            &name,
            secret_data(sources, &name),
            s.items.as_ref(),
            s.default_mode,
            s.optional.unwrap_or(false),
            &mut out,
        )
    } else if let Some(d) = &v.downward_api {
        downward(
            pod,
            node,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            &mut out,
        )
    } else if let Some(p) = &v.projected {
        projected(v, p, pod, node, sources, &mut out)
    } else {
        return None;
    };
    Some(result.map(|()| out))
}

fn projected(
    v: &Volume,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    pod: &Pod,
    node: &NodeView,
    sources: &Sources,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    for s in p.sources.iter().flatten() {
        if let Some(c) = &s.config_map {
            keyed(
                "configmap",
                &c.name,
                config_map_data(sources, &c.name),
                c.items.as_ref(),
                p.default_mode,
                c.optional.unwrap_or(false),
                out,
            )?;
        }
        if let Some(sec) = &s.secret {
            keyed(
                "secret",
                &sec.name,
                secret_data(sources, &sec.name),
                sec.items.as_ref(),
                p.default_mode,
                sec.optional.unwrap_or(false),
                out,
            )?;
        }
        if let Some(d) = &s.downward_api {
            downward(
                pod,
                node,
                d.items.as_deref().unwrap_or_default(),
                p.default_mode,
                out,
            )?;
        }
        if let Some(t) = &s.service_account_token {
            let token = sources
                .tokens
                .get(&super::service_account_token::key(t))
                .ok_or_else(|| VolumeError::Missing {
                    kind: "service account token",
                    name: t.path.clone(),
                })?;
            out.insert(
                t.path.clone(),
                FileProjection {
                    data: token.clone().into_bytes(),
                    mode: mode(p.default_mode, "defaultMode")?,
                },
            );
        }
        if s.cluster_trust_bundle.is_some() {
            tracing::warn!(volume = %v.name, "projected clusterTrustBundle sources are not supported; skipped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, DownwardAPIVolumeSource, ObjectFieldSelector, PodSpec,
        SecretVolumeSource,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node() -> NodeView {
        NodeView {
            host_ip: "10.0.0.1".into(),
            pod_ip: "10.244.0.2".into(),
            node_cpus_milli: 2000,
            node_memory_bytes: 1 << 30,
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some(
                    [
                        ("app".to_string(), "web \"x\"".to_string()),
                        ("a".to_string(), "1".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        }
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cm".into(),
            Some(ConfigMap {
                data: Some(
                    [
                        ("a".to_string(), "1".to_string()),
                        ("b".to_string(), "2".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
        );
        s.config_maps.insert("gone".into(), None);
        s.secrets.insert(
            "s".into(),
            Some(Secret {
                data: Some([("pw".to_string(), ByteString(b"hunter2".to_vec()))].into()),
                ..Default::default()
            }),
        );
        s
    }

    fn cm_volume(name: &str, items: Option<Vec<KeyToPath>>, optional: Option<bool>) -> Volume {
        Volume {
            name: "v".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.into(),
                items,
                default_mode: Some(0o600),
                optional,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn config_map_all_keys_and_items() {
        let p = payload(&cm_volume("cm", None, None), &pod(), &node(), &sources())
            .unwrap()
            .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p["a"].data, b"1");
        assert_eq!(p["a"].mode, 0o600);
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "dir/b.txt".into(),
            mode: Some(0o400),
        }];
        let p = payload(
            &cm_volume("cm", Some(items), None),
            &pod(),
            &node(),
            &sources(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["dir/b.txt"]);
        assert_eq!(p["dir/b.txt"].mode, 0o400);
    }

    #[test]
    fn missing_objects_and_keys() {
        let e = payload(&cm_volume("gone", None, None), &pod(), &node(), &sources())
            .unwrap()
            .unwrap_err();
        assert_eq!(e.to_string(), "configmap \"gone\" not found");
        let p = payload(
            &cm_volume("gone", None, Some(true)),
            &pod(),
            &node(),
            &sources(),
        )
        .unwrap()
        .unwrap();
        assert!(p.is_empty());
        let items = vec![KeyToPath {
            key: "zzz".into(),
            path: "z".into(),
            mode: None,
        }];
        let e = payload(
            &cm_volume("cm", Some(items), None),
            &pod(),
            &node(),
            &sources(),
        )
        .unwrap()
        .unwrap_err();
        assert!(
            e.to_string().contains("non-existent config key: zzz"),
            "{e}"
        );
        let bad_mode = Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                default_mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            payload(&bad_mode, &pod(), &node(), &sources())
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn secret_and_downward_api() {
        let v = Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = payload(&v, &pod(), &node(), &sources()).unwrap().unwrap();
        assert_eq!(p["pw"].data, b"hunter2");
        assert_eq!(p["pw"].mode, 0o644);
        let field = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    field("labels", "metadata.labels"),
                    field("name", "metadata.name"),
                    field("app", "metadata.labels['app']"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = payload(&v, &pod(), &node(), &sources()).unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&p["labels"].data),
            "a=\"1\"\napp=\"web \\\"x\\\"\""
        );
        assert_eq!(p["name"].data, b"p");
        assert_eq!(p["app"].data, b"web \"x\"");
    }

    #[test]
    fn other_kinds_have_no_payload() {
        let v = Volume {
            name: "e".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        };
        assert!(payload(&v, &pod(), &node(), &sources()).is_none());
    }
}
