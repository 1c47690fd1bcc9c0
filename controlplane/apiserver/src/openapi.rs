//! OpenAPI v3 documents, one per group-version, as kubectl reads them: `/openapi/v3` lists them
//! with a content hash; each document has the resource paths (PATCH operations carry
//! `x-kubernetes-group-version-kind`, the patch content types and the `fieldValidation`
//! parameter, which is how `kubectl apply` decides to leave validation to the server) and the
//! component schemas (top-level kinds carry `x-kubernetes-group-version-kind`, used by
//! `kubectl explain` and by kubectl's strategic-merge-patch computation).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, ResourceInfo, groups};
use super::schema::Schemas;

pub struct OpenApiDocs {
    /// "api/v1", "apis/apps/v1" → (hash, document bytes)
    docs: BTreeMap<String, (String, Vec<u8>)>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.rsplit('/').next().unwrap_or_default().to_string());
            }
            m.values().for_each(|c| refs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
        _ => {}
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operations(r: &ResourceInfo, item: bool) -> Map<String, Value> {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let ok = |schema: &str| json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref(schema)}}}});
    let list_schema = format!("{}List", r.schema);
    let op = |action: &str, verb: &str, responses: Value, params: Vec<Value>| {
        json!({
            "description": format!("{action} {}", r.kind),
            "operationId": format!("{verb}{}", r.kind),
            "parameters": params,
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let write_params = || {
        vec![
            query(
                "dryRun",
                "When present, indicates that modifications should not be persisted.",
            ),
            query(
                "fieldManager",
                "fieldManager is a name associated with the actor or entity that is making these changes.",
            ),
            query(
                "fieldValidation",
                "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
            ),
        ]
    };
    let body = |types: &[&str]| {
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": schema_ref(r.schema)})))
            .collect();
        json!({"content": content, "required": true})
    };
    let mut m = Map::new();
    if item {
        m.insert("get".into(), op("get", "read", ok(r.schema), vec![]));
        let mut put = op("put", "replace", ok(r.schema), write_params());
        put["requestBody"] = body(&["*/*"]);
        m.insert("put".into(), put);
        let mut params = write_params();
        params.push(query(
            "force",
            "Force is going to \"force\" Apply requests.",
        ));
        let mut patch = op("patch", "patch", ok(r.schema), params);
        patch["requestBody"] = body(&[
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ]);
        m.insert("patch".into(), patch);
        m.insert(
            "delete".into(),
            op(
                "delete",
                "delete",
                ok("io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
                vec![
                    query(
                        "gracePeriodSeconds",
                        "The duration in seconds before the object should be deleted.",
                    ),
                    query(
                        "propagationPolicy",
                        "Whether and how garbage collection will be performed.",
                    ),
                ],
            ),
        );
    } else {
        m.insert(
            "get".into(),
            op("list", "list", ok(&list_schema), vec![query("labelSelector", "A selector to restrict the list of returned objects by their labels."), query("fieldSelector", "A selector to restrict the list of returned objects by their fields."), query("limit", "limit is a maximum number of responses to return for a list call."), query("continue", "The continue option should be set when retrieving more results from the server."), query("watch", "Watch for changes to the described resources.")]),
        );
        let mut post = op("post", "create", ok(r.schema), write_params());
        post["requestBody"] = body(&["*/*"]);
        m.insert("post".into(), post);
        m.insert(
            "delete".into(),
            op(
                "deletecollection",
                "deletecollection",
                ok("io.k8s.apimachinery.pkg.apis.meta.v1.Status"),
                vec![],
            ),
        );
    }
    m
}

impl OpenApiDocs {
    pub fn build(schemas: &Schemas) -> Self {
        let defs = schemas.definitions();
        let mut docs = BTreeMap::new();
        for (group, version) in groups() {
            let mut paths = Map::new();
            let mut wanted: Vec<String> =
                vec!["io.k8s.apimachinery.pkg.apis.meta.v1.Status".into()];
            for r in RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                let base = if r.group.is_empty() {
                    format!("/api/{}", r.version)
                } else {
                    format!("/apis/{}/{}", r.group, r.version)
                };
                let coll = if r.namespaced {
                    format!("{base}/namespaces/{{namespace}}/{}", r.plural)
                } else {
                    format!("{base}/{}", r.plural)
                };
                paths.insert(coll.clone(), Value::Object(operations(r, false)));
                paths.insert(
                    format!("{coll}/{{name}}"),
                    Value::Object(operations(r, true)),
                );
                wanted.push(r.schema.to_string());
            }
            // Everything reachable from the kinds.
            let mut components = Map::new();
            let mut seen = BTreeSet::new();
            while let Some(name) = wanted.pop() {
                if !seen.insert(name.clone()) {
                    continue;
                }
                let Some(mut def) = defs.get(&name).cloned() else {
                    continue;
                };
                let mut next = Vec::new();
                refs(&def, &mut next);
                wanted.extend(next);
                if let Some(r) = RESOURCES.iter().find(|r| r.schema == name) {
                    def["x-kubernetes-group-version-kind"] =
                        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
                }
                components.insert(name, def);
            }
            // List kinds, for the list operations' responses.
            for r in RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                components.insert(
                    format!("{}List", r.schema),
                    json!({
                        "description": format!("{}List is a list of {}.", r.kind, r.kind),
                        "type": "object",
                        "required": ["items"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "items": {"type": "array", "items": schema_ref(r.schema)},
                            "metadata": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
                        },
                        "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.list_kind()}],
                    }),
                );
            }
            if !components.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta") {
                components.insert(
                    "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".into(),
                    json!({"type": "object", "properties": {"continue": {"type": "string"}, "resourceVersion": {"type": "string"}, "remainingItemCount": {"type": "integer", "format": "int64"}}}),
                );
            }
            if !components.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.Status") {
                components.insert(
                    "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
                    json!({"type": "object", "properties": {"apiVersion": {"type": "string"}, "code": {"type": "integer", "format": "int32"}, "kind": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"}, "status": {"type": "string"}}}),
                );
            }
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": paths,
                "components": {"schemas": components},
            });
            let bytes = serde_json::to_vec(&doc).expect("serialisable");
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            docs.insert(
                gv_path(group, version),
                (format!("{:016X}", h.finish()), bytes),
            );
        }
        Self { docs }
    }

    /// The `/openapi/v3` index.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .docs
            .iter()
            .map(|(p, (hash, _))| {
                (
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// The document of `api/v1` or `apis/GROUP/VERSION`.
    pub fn document(&self, gv: &str) -> Option<&[u8]> {
        self.docs.get(gv).map(|(_, b)| b.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_document_has_patch_with_field_validation_and_gvk_schemas() {
        let docs = OpenApiDocs::build(&Schemas::generate());
        let doc: Value = serde_json::from_slice(docs.document("apis/apps/v1").unwrap()).unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(
            patch["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_some()
        );
        let d = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            doc["components"]["schemas"]
                .get("io.k8s.api.core.v1.PodSpec")
                .is_some()
        );
        assert!(docs.index()["paths"].get("api/v1").is_some());
    }
}
