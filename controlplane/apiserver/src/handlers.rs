//! The generic resource handlers: one code path for every served resource, specialised only
//! through [`ResourceInfo`], defaulting, validation and the few subresources.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::deletion::{self, DeleteOptions};
use super::object::{decode_kv, encode_for, meta_mut, meta_str, set_pointer, set_rv};
use super::patch::PatchType;
use super::resources::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector, selector_string};
use super::status::{ApiError, ApiResult, FieldError, Reason};
use super::watch_cache::{CachedObject, Filter};
use super::{
    ApiServer, alloc, apply, defaults, list_stream, patch, ranges, table, validation, watch,
};
use skiff_store::{KeyValue, StoreError};

/// The resource a request path names.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/GROUP/VERSION/...`; `None` when the path names no resource.
pub fn parse_target(path: &str) -> Option<ApiResult<Target>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| resources::find(group, version, plural);
    let not_found = || Some(Err(ApiError::not_found_path()));
    let t = |res, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Some(Ok(Target {
            res,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        }))
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if group.is_empty() || find(plural).is_some() => {
            match (find(plural), tail) {
                (Some(r), []) if r.namespaced => t(r, Some(ns), None, None),
                (Some(r), [name]) if r.namespaced => t(r, Some(ns), Some(name), None),
                (Some(r), [name, sub]) if r.namespaced && r.has(sub) => {
                    t(r, Some(ns), Some(name), Some(sub))
                }
                // /api/v1/namespaces/NAME/status|finalize
                (None, []) if group.is_empty() => {
                    let r = find("namespaces")?;
                    if r.has(plural) {
                        t(r, None, Some(ns), Some(plural))
                    } else {
                        not_found()
                    }
                }
                _ => not_found(),
            }
        }
        [plural] => match find(plural) {
            Some(r) => t(r, None, None, None),
            None => not_found(),
        },
        [plural, name] => match find(plural) {
            Some(r) if !r.namespaced => t(r, None, Some(name), None),
            _ => not_found(),
        },
        [plural, name, sub] => match find(plural) {
            Some(r) if !r.namespaced && r.has(sub) => t(r, None, Some(name), Some(sub)),
            _ => not_found(),
        },
        _ => not_found(),
    }
}

/// `fieldValidation`: what a write does with fields its type does not have.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject the request.
    Strict,
    /// Drop them with a warning.
    #[default]
    Warn,
    /// Drop them silently.
    Ignore,
}

impl FieldValidation {
    fn parse(v: Option<&str>) -> ApiResult<Self> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation {other} is not supported: supported values: Ignore, Strict, Warn"
            ))),
        }
    }
}

/// Options common to writes.
#[derive(Debug, Default, Clone)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    /// The subresource the write came through, when it is not the one being committed (scale).
    pub subresource: Option<&'static str>,
}

impl WriteOptions {
    /// From the query; without `fieldManager`, the manager is named after the User-Agent's
    /// program, as the real server does (`kubectl/v1.32.4 (linux/amd64) …` → `kubectl`).
    fn from_request(q: &HashMap<String, String>, headers: &HeaderMap) -> ApiResult<Self> {
        let dry_run = match q.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid dry run value: {other}: supported values: \"All\""
                )));
            }
        };
        let field_validation =
            FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        Ok(Self {
            dry_run,
            field_manager: q
                .get("fieldManager")
                .cloned()
                .filter(|m| !m.is_empty())
                .or_else(|| {
                    headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|ua| ua.split('/').next())
                        .map(|p| p.chars().take(128).collect::<String>())
                        .filter(|p| !p.is_empty())
                }),
            field_validation,
            subresource: None,
        })
    }
}

/// The body of a request as JSON (JSON or YAML on the wire).
pub fn decode_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence == "application/vnd.kubernetes.protobuf" {
        return super::protobuf::decode(body).map_err(|e| ApiError::bad_request(e.to_string()));
    }
    if essence.contains("protobuf") || essence.contains("cbor") {
        return Err(ApiError::unsupported_media_type(ct));
    }
    // JSON is YAML too, but YAML's scalar rules would read an unquoted-looking JSON string such
    // as "Y" differently under some parsers: JSON bodies are read as JSON whatever the type says.
    let looks_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    if essence.ends_with("yaml") && !looks_json {
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
        return serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))
}

/// What the client asked the response to be: the object, a Table, or metadata only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Table,
    Metadata,
}

fn shape(headers: &HeaderMap) -> Shape {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The first clause we can serve wins, as in content negotiation.
    for clause in accept.split(',') {
        if clause.contains("as=Table") {
            return Shape::Table;
        }
        if clause.contains("as=PartialObjectMetadata") {
            return Shape::Metadata;
        }
        if clause.contains("json") || clause.contains("*/*") {
            return Shape::Object;
        }
    }
    Shape::Object
}

/// The `meta.k8s.io/v1` PartialObjectMetadata of an object.
pub fn partial(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// A list in the form the client asked for.
fn list_shape(r: &ResourceInfo, list: Value, shape: Shape, include: Option<&str>) -> Value {
    match shape {
        Shape::Table => table::table_for_list(r, &list, include),
        Shape::Metadata => {
            let items: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(partial)
                .collect();
            json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list["metadata"],
                "items": items,
            })
        }
        Shape::Object => list,
    }
}

fn respond(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, serde_json::to_vec(v).expect("serialisable")).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        if let Ok(h) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

/// Result of a write: status code, object, warnings.
pub(super) type WriteResult = ApiResult<(StatusCode, Value, Vec<String>)>;

impl ApiServer {
    /// Serves one request under `/api` or `/apis` that names a resource.
    pub async fn serve_resource(
        self: &Arc<Self>,
        target: Target,
        method: Method,
        query: HashMap<String, String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let result = self
            .dispatch(&target, &method, &query, &headers, &body)
            .await;
        match result {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    async fn dispatch(
        self: &Arc<Self>,
        t: &Target,
        method: &Method,
        q: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> ApiResult<Response> {
        let r = t.res;
        let ns = t.namespace.as_deref();
        let is_watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let shape = shape(headers);
        let write = |(code, v, w): (StatusCode, Value, Vec<String>)| -> ApiResult<Response> {
            Ok(respond(code, &v, &w))
        };
        if r.namespaced && t.namespace.is_some() {
            let ns_name = t.namespace.as_deref().unwrap_or_default();
            if !validation::is_dns1123_label(ns_name) {
                return Err(ApiError::not_found(
                    r,
                    t.name.as_deref().unwrap_or_default(),
                ));
            }
        }
        match (method, t.name.as_deref(), t.sub.as_deref()) {
            (&Method::GET, None, None) if is_watch => {
                watch::serve(self.clone(), r, t.namespace.clone(), q, shape).await
            }
            (&Method::GET, None, None) => {
                let include = q.get("includeObject").map(String::as_str);
                if let Some((objects, rev)) = self.list_from_cache(r, ns, q).await? {
                    if shape == Shape::Object {
                        return Ok(list_stream::from_cache(r, rev, objects));
                    }
                    let items: Vec<Value> = objects.iter().map(|o| o.value()).collect();
                    let list = json!({
                        "kind": r.list_kind(),
                        "apiVersion": r.api_version(),
                        "metadata": {"resourceVersion": rev.to_string()},
                        "items": items,
                    });
                    return Ok(respond(
                        StatusCode::OK,
                        &list_shape(r, list, shape, include),
                        &[],
                    ));
                }
                let unpaged = q.get("limit").is_none_or(|l| l.is_empty() || l == "0")
                    && q.get("continue").is_none_or(String::is_empty);
                if shape == Shape::Object && unpaged {
                    let exact = super::revisions::for_list(&*self.store, q).await?;
                    let filter = Filter::parse(q, r)?;
                    let (store, prefix) = (self.store.clone(), r.prefix(ns));
                    return list_stream::from_store(store, r, prefix, filter, exact).await;
                }
                let list = self.list(r, ns, q).await?;
                Ok(respond(
                    StatusCode::OK,
                    &list_shape(r, list, shape, include),
                    &[],
                ))
            }
            (&Method::GET, Some(name), None) => {
                super::revisions::for_get(&*self.store, q).await?;
                let obj = self.get(r, ns, name).await?.1;
                let body = match shape {
                    Shape::Table => {
                        let include = q.get("includeObject").map(String::as_str);
                        let rv = meta_str(&obj, "resourceVersion")
                            .unwrap_or_default()
                            .to_string();
                        table::table_for_objects(r, std::slice::from_ref(&obj), &rv, include)
                    }
                    Shape::Metadata => partial(&obj),
                    Shape::Object => obj,
                };
                Ok(respond(StatusCode::OK, &body, &[]))
            }
            (&Method::GET, Some(name), Some(sub))
                if sub == "status" || r.strategy.subresource_field(sub).is_some() =>
            {
                Ok(respond(
                    StatusCode::OK,
                    &self.get(r, ns, name).await?.1,
                    &[],
                ))
            }
            (&Method::GET, Some(name), Some("scale")) => {
                let obj = self.get(r, ns, name).await?.1;
                Ok(respond(StatusCode::OK, &to_scale(&obj), &[]))
            }
            (&Method::POST, None, None) => {
                let opts = WriteOptions::from_request(q, headers)?;
                let obj = decode_body(headers, body)?;
                write(self.create(r, ns, obj, &opts).await?)
            }
            (&Method::POST, Some(name), Some("binding")) => {
                let b = decode_body(headers, body)?;
                self.bind(r, ns, name, &b).await?;
                Ok(respond(StatusCode::CREATED, &success(201), &[]))
            }
            (&Method::POST, Some(name), Some("eviction")) => {
                let ev = decode_body(headers, body)?;
                let opts = ev.get("deleteOptions").cloned().unwrap_or(json!({}));
                let opts = DeleteOptions::parse(r, name, &opts, &HashMap::new())?;
                self.delete(r, ns, name, &opts).await?;
                Ok(respond(StatusCode::CREATED, &success(201), &[]))
            }
            (&Method::PUT, Some(name), sub)
                if matches!(
                    sub,
                    None | Some("status" | "scale" | "finalize" | "approval")
                ) || sub.is_some_and(|s| r.strategy.subresource_field(s).is_some()) =>
            {
                let opts = WriteOptions::from_request(q, headers)?;
                let obj = decode_body(headers, body)?;
                write(self.update(r, ns, name, obj, sub, &opts).await?)
            }
            (&Method::PATCH, Some(name), sub)
                if matches!(sub, None | Some("status" | "scale"))
                    || sub.is_some_and(|s| r.strategy.subresource_field(s).is_some()) =>
            {
                let opts = WriteOptions::from_request(q, headers)?;
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let p = decode_body(headers, body)?;
                let force = matches!(q.get("force").map(String::as_str), Some("true" | "1"));
                write(self.patch(r, ns, name, sub, &ct, &p, force, &opts).await?)
            }
            (&Method::DELETE, Some(name), None) => {
                let opts = if body.is_empty() {
                    json!({})
                } else {
                    decode_body(headers, body)?
                };
                let opts = DeleteOptions::parse(r, name, &opts, q)?;
                write(self.delete(r, ns, name, &opts).await?)
            }
            (&Method::DELETE, None, None) => {
                let opts = if body.is_empty() {
                    json!({})
                } else {
                    decode_body(headers, body)?
                };
                let opts = DeleteOptions::parse(r, "", &opts, q)?;
                let (list, warnings) = self.delete_collection(r, ns, &opts, q).await?;
                Ok(respond(StatusCode::OK, &list, &warnings))
            }
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    pub async fn get(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(KeyValue, Value)> {
        let kv = self
            .store
            .get(&r.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(r, name))?;
        let v = r.strategy.served_form(decode_kv(&kv)?);
        Ok((kv, v))
    }

    /// A `resourceVersion=0` list (any state will do) answered from the watch cache, with the
    /// revision it is at; `None` for other lists, or when the cache cannot be had (the store
    /// answers then). As kube-apiserver's cache does, it returns the whole list whatever `limit`.
    async fn list_from_cache(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        q: &HashMap<String, String>,
    ) -> ApiResult<Option<(Vec<Arc<CachedObject>>, u64)>> {
        let continuing = q.get("continue").is_some_and(|c| !c.is_empty());
        if q.get("resourceVersion").map(String::as_str) != Some("0") || continuing {
            return Ok(None);
        }
        super::revisions::for_list(&*self.store, q).await?;
        let filter = Filter::parse(q, r)?;
        match self.watch_cache.get(&self.store, r).await {
            Ok(cache) => Ok(Some(cache.list(&r.prefix(ns), &filter))),
            Err(e) => {
                tracing::debug!(error = %e.message, "listing from the store: no watch cache");
                Ok(None)
            }
        }
    }

    /// A list response (`<Kind>List`) honouring selectors and `limit`/`continue`.
    pub async fn list(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        q: &HashMap<String, String>,
    ) -> ApiResult<Value> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), r)?;
        let limit: usize = match q.get("limit").map(String::as_str) {
            None | Some("") => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let exact = super::revisions::for_list(&*self.store, q).await?;
        let prefix = r.prefix(ns);
        let mut start: Option<String> = None;
        // With resourceVersionMatch=Exact every page reads that revision (410 once compacted).
        let mut first_rev: Option<u64> = exact;
        if let Some(token) = q.get("continue").filter(|s| !s.is_empty()) {
            let (key, rev) = decode_continue(token)?;
            if !key.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue key is not valid for this request",
                ));
            }
            if rev < self.store.compacted_revision() {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            start = Some(key);
            first_rev = Some(rev);
        }
        let mut items = Vec::new();
        let mut more = false;
        let mut last_key = None;
        let mut revision;
        // Only the name pins a single key; everything else filters a range.
        let page = if limit == 0 { 0 } else { limit.max(100) };
        loop {
            // Later pages read the state at the first page's revision.
            let res = match first_rev {
                Some(at) => {
                    self.store
                        .range_at(&prefix, start.as_deref(), page, at)
                        .await?
                }
                None => self.store.range(&prefix, start.as_deref(), page).await?,
            };
            revision = res.revision;
            first_rev = Some(revision);
            let n = res.kvs.len();
            let mut stopped_early = false;
            for kv in res.kvs {
                if limit > 0 && items.len() == limit {
                    more = true;
                    stopped_early = true;
                    break;
                }
                let obj = r.strategy.served_form(decode_kv(&kv)?);
                last_key = Some(kv.key.clone());
                let l = obj.pointer("/metadata/labels").and_then(Value::as_object);
                if labels.matches(l) && fields.matches(&obj) {
                    items.push(obj);
                }
            }
            if stopped_early {
                break;
            }
            if !res.more || n == 0 {
                break;
            }
            start = last_key.clone();
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
        }
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if more && let Some(k) = last_key {
            meta["continue"] = json!(encode_continue(&k, revision));
        }
        Ok(json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// Checks the request body's kind, apiVersion, name and namespace against the URL.
    fn check_identity(
        r: &ResourceInfo,
        obj: &mut Value,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != r.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )));
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
            && av != r.api_version()
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
        obj["kind"] = json!(r.kind);
        obj["apiVersion"] = json!(r.api_version());
        let m = meta_mut(obj);
        if r.namespaced {
            let url_ns = ns.unwrap_or_default();
            match m.get("namespace").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(url_ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        if let Some(name) = name {
            match m.get("name").and_then(Value::as_str) {
                Some(b) if !b.is_empty() && b != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({b}) does not match the name on the URL ({name})"
                    )));
                }
                _ => {
                    m.insert("name".into(), json!(name));
                }
            }
        }
        Ok(())
    }

    /// Unknown-field handling per `fieldValidation`, then decoding through the typed model.
    fn decode_typed(
        &self,
        r: &ResourceInfo,
        schema: &str,
        kind: &str,
        obj: Value,
        opts: &WriteOptions,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        if opts.field_validation != FieldValidation::Ignore {
            let unknown = self.schemas.unknown_fields(schema, &obj);
            if !unknown.is_empty() {
                let msgs: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                if opts.field_validation == FieldValidation::Strict {
                    return Err(ApiError::bad_request(format!(
                        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                        r.version,
                        msgs.join(", ")
                    )));
                }
                warnings.extend(msgs);
            }
        }
        let mut typed = resources::normalize(schema, obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: {e}",
                r.version
            ))
        })?;
        // Go omits empty metadata collections; so do we.
        if let Some(m) = typed.get_mut("metadata").and_then(Value::as_object_mut) {
            m.retain(|k, v| {
                !(matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences" | "managedFields"
                ) && (v.as_object().is_some_and(Map::is_empty)
                    || v.as_array().is_some_and(Vec::is_empty)))
            });
        }
        Ok(typed)
    }

    /// The namespace lifecycle admission: content is created only in a namespace that exists
    /// and is not terminating.
    async fn namespace_must_exist(&self, r: &ResourceInfo, ns: &str, name: &str) -> ApiResult<()> {
        let nsr = resources::find("", "v1", "namespaces").expect("namespaces are served");
        match self.store.get(&nsr.key(None, ns)).await? {
            None => Err(ApiError::namespace_not_found(ns)),
            Some(kv) => {
                let o = decode_kv(&kv)?;
                if o.pointer("/metadata/deletionTimestamp").is_some() {
                    Err(ApiError::namespace_terminating(r, name, ns))
                } else {
                    Ok(())
                }
            }
        }
    }

    pub fn service_ranges(&self) -> ranges::ServiceRanges<'_> {
        ranges::ServiceRanges::new(self.store.as_ref(), &self.network)
    }

    /// Fills in the Service's addresses and NodePorts against what is recorded as allocated and,
    /// when `claim`, records the new ones; returns what it recorded. Another server taking an
    /// address between the two steps makes it pick again.
    async fn allocate_service(
        &self,
        r: &ResourceInfo,
        name: &str,
        obj: &mut Value,
        claim: bool,
    ) -> ApiResult<alloc::InUse> {
        let ranges = self.service_ranges();
        for _ in 0..20 {
            let in_use = ranges.snapshot().await?;
            let mut candidate = obj.clone();
            alloc::allocate(&self.network, &mut candidate, None, &in_use)
                .map_err(|errs| ApiError::invalid(r, name, errs))?;
            let want = alloc::InUse::of(&candidate);
            if !claim || ranges.claim(&want).await? {
                *obj = candidate;
                return Ok(if claim { want } else { Default::default() });
            }
        }
        Err(ApiError::internal(
            "allocating Service addresses: other servers kept taking the ones picked",
        ))
    }

    pub async fn create(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> WriteResult {
        Self::check_identity(r, &mut obj, ns, None)?;
        let mut warnings = Vec::new();
        let body = obj.clone();
        let mut obj = self.decode_typed(r, r.schema, r.kind, obj, opts, &mut warnings)?;
        {
            let m = meta_mut(&mut obj);
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            let gen_name = m
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.is_empty() && !gen_name.is_empty() {
                let n = format!("{gen_name}{}", random_suffix());
                m.insert("name".into(), json!(n));
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert(
                "creationTimestamp".into(),
                json!(skiff_k8s::time::now().to_string()),
            );
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.remove(f);
            }
            if r.strategy.tracks_generation() {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if r.has("status")
            && !r.strategy.keeps_status_on_create()
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        // Admission (the Priority plugins) before defaulting, which would fill in priority 0.
        r.strategy.admit_create(self, &mut obj).await?;
        crate::auth::node::admit(r, crate::auth::node::Write::Create(&obj))?;
        defaults::apply(r, &mut obj);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let errs = validation::validate(r, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(r, &name, errs));
        }
        if let Some(m) = &opts.field_manager {
            apply::record_update(&self.schemas, r, &mut obj, m, &body, None);
        }
        if r.namespaced {
            self.namespace_must_exist(r, ns.unwrap_or_default(), &name)
                .await?;
        }
        let key = r.key(ns, &name);
        let mut claimed = alloc::InUse::default();
        if r.strategy.allocates_service_addresses() {
            claimed = self
                .allocate_service(r, &name, &mut obj, !opts.dry_run)
                .await?;
        }
        if opts.dry_run {
            return Ok((StatusCode::CREATED, obj, warnings));
        }
        let created = self.store.create(&key, encode_for(r, &obj)).await;
        if created.is_err() && !claimed.is_empty() {
            self.service_ranges().release(&claimed).await;
        }
        let kv = match created {
            Ok(kv) => kv,
            Err(StoreError::AlreadyExists(_)) => return Err(ApiError::already_exists(r, &name)),
            Err(e) => return Err(e.into()),
        };
        set_rv(&mut obj, kv.mod_revision);
        Ok((StatusCode::CREATED, obj, warnings))
    }

    /// Writes `new` over `cur` (stored as `cur_kv`): the part of update shared by PUT, PATCH and
    /// the subresources. Preserves what clients may not set, applies defaults and validation,
    /// skips no-op writes, bumps `generation` on spec changes and completes deletions whose
    /// finalizers are gone.
    async fn commit_update(
        &self,
        r: &ResourceInfo,
        cur_kv: &KeyValue,
        cur: &Value,
        mut new: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<(StatusCode, Value)> {
        let name = meta_str(cur, "name").unwrap_or_default().to_string();
        let sub_field = sub.and_then(|s| r.strategy.subresource_field(s));
        let particular = match sub {
            Some(s) if sub_field.is_none() => {
                r.strategy
                    .admit_subresource_update(self, s, cur, &mut new)
                    .await?
            }
            _ => false,
        };
        match sub {
            _ if particular => {}
            Some(_) if let Some(field) = sub_field => {
                // Only the subresource's field changes.
                let part = new.pointer(field).cloned();
                new = cur.clone();
                set_pointer(&mut new, field, part);
            }
            Some("status") => {
                // Only the status changes.
                let status = new.get("status").cloned();
                new = cur.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            _ if r.has("status") => {
                // The main resource ignores status changes.
                match cur.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            _ => {}
        }
        {
            let cm = cur.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ] {
                match cm.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
            if !m.contains_key("managedFields")
                && let Some(mf) = cm.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
            m.insert(
                "resourceVersion".into(),
                json!(cur_kv.mod_revision.to_string()),
            );
        }
        r.strategy.admit_update(self, cur, &mut new).await?;
        crate::auth::node::admit(r, crate::auth::node::Write::Update { cur, sub })?;
        defaults::apply(r, &mut new);
        // Allocated addresses and ports an update leaves out are kept, as the real server does.
        let allocates = r.strategy.allocates_service_addresses();
        if allocates {
            let in_use = self.service_ranges().snapshot().await?;
            alloc::allocate(&self.network, &mut new, Some(cur), &in_use)
                .map_err(|errs| ApiError::invalid(r, &name, errs))?;
        }
        let mut errs = validation::validate(r, &new);
        match (sub, sub_field) {
            (Some(s), Some(_)) => r
                .strategy
                .validate_subresource_update(s, cur, &new, &mut errs),
            _ => errs.extend(validation::validate_update(r, cur, &new)),
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(r, &name, errs));
        }
        if r.strategy.tracks_generation() && cur.get("spec") != new.get("spec") {
            let g = cur
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if let Some(m) = &opts.field_manager {
            let changed = apply::changed_fields(cur, &new);
            apply::record_update(
                &self.schemas,
                r,
                &mut new,
                m,
                &changed,
                opts.subresource.or(sub),
            );
        }
        if &new == cur {
            return Ok((StatusCode::OK, new));
        }
        if opts.dry_run {
            return Ok((StatusCode::OK, new));
        }
        if deletion::finalized(r, &new) {
            let kv = self
                .store
                .delete(&cur_kv.key, Some(cur_kv.mod_revision))
                .await
                .map_err(|e| self.write_error(r, &name, e))?;
            if allocates {
                self.service_ranges().release(&alloc::InUse::of(cur)).await;
            }
            set_rv(&mut new, kv.mod_revision);
            return Ok((StatusCode::OK, new));
        }
        // The addresses the update adds are recorded before it is written, the ones it drops
        // freed after.
        let (held, holds) = (alloc::InUse::of(cur), alloc::InUse::of(&new));
        let claimed = ranges::minus(&holds, &held);
        if allocates && !claimed.is_empty() && !self.service_ranges().claim(&claimed).await? {
            return Err(ApiError::modified(r, &name));
        }
        let written = self
            .store
            .update(&cur_kv.key, encode_for(r, &new), cur_kv.mod_revision)
            .await;
        if allocates {
            let freed = match &written {
                Ok(_) => ranges::minus(&held, &holds),
                Err(_) => claimed,
            };
            if !freed.is_empty() {
                self.service_ranges().release(&freed).await;
            }
        }
        let kv = written.map_err(|e| self.write_error(r, &name, e))?;
        set_rv(&mut new, kv.mod_revision);
        Ok((StatusCode::OK, new))
    }

    pub(super) fn write_error(&self, r: &ResourceInfo, name: &str, e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { .. } => ApiError::modified(r, name),
            StoreError::NotFound(_) => ApiError::not_found(r, name),
            other => other.into(),
        }
    }

    pub async fn update(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> WriteResult {
        let mut warnings = Vec::new();
        if sub == Some("scale") {
            let (kv, cur) = self.get(r, ns, name).await?;
            let scale_rv = meta_str(&obj, "resourceVersion")
                .unwrap_or_default()
                .to_string();
            if !scale_rv.is_empty() && scale_rv != kv.mod_revision.to_string() {
                return Err(ApiError::modified(r, name));
            }
            let new = from_scale(r, &cur, &obj)?;
            let scale_opts = WriteOptions {
                subresource: Some("scale"),
                ..opts.clone()
            };
            let (code, out) = self
                .commit_update(r, &kv, &cur, new, None, &scale_opts)
                .await?;
            return Ok((code, to_scale(&out), warnings));
        }
        if sub == Some("finalize") {
            let (kv, cur) = self.get(r, ns, name).await?;
            let mut new = cur.clone();
            new["spec"]["finalizers"] = obj
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            let (code, out) = self.commit_update(r, &kv, &cur, new, None, opts).await?;
            return Ok((code, out, warnings));
        }
        Self::check_identity(r, &mut obj, ns, Some(name))?;
        let precondition = meta_str(&obj, "resourceVersion")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let obj = self.decode_typed(r, r.schema, r.kind, obj, opts, &mut warnings)?;
        for _ in 0..16 {
            let (kv, cur) = self.get(r, ns, name).await?;
            if let Some(p) = &precondition
                && *p != kv.mod_revision.to_string()
            {
                return Err(ApiError::modified(r, name));
            }
            check_uid(r, name, &obj, &cur)?;
            match self
                .commit_update(r, &kv, &cur, obj.clone(), sub, opts)
                .await
            {
                Err(e) if e.is_write_conflict() && precondition.is_none() => continue,
                other => {
                    let (code, v) = other?;
                    return Ok((code, v, warnings));
                }
            }
        }
        Err(ApiError::modified(r, name))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        p: &Value,
        force: bool,
        opts: &WriteOptions,
    ) -> WriteResult {
        let mut warnings = Vec::new();
        let patch_type = PatchType::from_content_type(content_type);
        let is_apply = patch_type == Some(PatchType::Apply);
        if is_apply && opts.field_manager.is_none() {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager parameter",
            ));
        }
        for _ in 0..16 {
            let (kv, cur) = match self.get(r, ns, name).await {
                Ok(found) => found,
                Err(e) if e.reason == Reason::NotFound && is_apply && sub.is_none() => {
                    let mut obj = p.clone();
                    Self::check_identity(r, &mut obj, ns, Some(name))?;
                    let manager = opts.field_manager.clone().unwrap_or_default();
                    let mut create_opts = opts.clone();
                    create_opts.field_manager = None;
                    let config = obj.clone();
                    let (code, mut created, w) = self.create(r, ns, obj, &create_opts).await?;
                    if !opts.dry_run {
                        // Record the applier's ownership on the stored object.
                        let (kv, cur) = self.get(r, ns, name).await?;
                        let mut owned = cur.clone();
                        apply::record_apply(&self.schemas, r, &mut owned, &manager, &config);
                        let kv2 = self
                            .store
                            .update(&kv.key, encode_for(r, &owned), kv.mod_revision)
                            .await
                            .map_err(|e| self.write_error(r, name, e))?;
                        set_rv(&mut owned, kv2.mod_revision);
                        created = owned;
                    }
                    return Ok((code, created, w));
                }
                Err(e) => return Err(e),
            };
            let base = if sub == Some("scale") {
                to_scale(&cur)
            } else {
                cur.clone()
            };
            let (schema, kind) = if sub == Some("scale") {
                ("io.k8s.api.autoscaling.v1.Scale", "Scale")
            } else {
                (r.schema, r.kind)
            };
            let patched = match patch_type {
                Some(PatchType::Json) => patch::json_patch(&base, p),
                Some(PatchType::Merge) => patch::merge_patch(&base, p),
                Some(PatchType::StrategicMerge) => {
                    patch::strategic_merge_patch(&self.schemas, schema, &base, p)
                }
                Some(PatchType::Apply) => {
                    let manager = opts.field_manager.as_deref().unwrap_or_default();
                    let mut config = p.clone();
                    Self::check_identity(r, &mut config, ns, Some(name))?;
                    Ok(apply::apply(
                        &self.schemas,
                        r,
                        &base,
                        &config,
                        manager,
                        force,
                    )?)
                }
                None => {
                    return Err(ApiError::unsupported_media_type(content_type));
                }
            }
            .map_err(ApiError::from)?;
            let precondition = meta_str(&patched, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .filter(|rv| Some(rv.as_str()) != meta_str(&base, "resourceVersion"));
            if precondition.is_some() {
                return Err(ApiError::modified(r, name));
            }
            check_uid(r, name, &patched, &base)?;
            let mut patched = patched;
            if sub != Some("scale") {
                Self::check_identity(r, &mut patched, ns, Some(name))?;
            }
            let typed = self.decode_typed(r, schema, kind, patched, opts, &mut warnings)?;
            let new = if sub == Some("scale") {
                from_scale(r, &cur, &typed)?
            } else {
                typed
            };
            let commit_sub = if sub == Some("scale") { None } else { sub };
            let mut patch_opts = opts.clone();
            if is_apply {
                patch_opts.field_manager = None;
            }
            if sub == Some("scale") {
                patch_opts.subresource = Some("scale");
            }
            match self
                .commit_update(r, &kv, &cur, new, commit_sub, &patch_opts)
                .await
            {
                Err(e) if e.is_write_conflict() => continue,
                other => {
                    let (code, v) = other?;
                    let v = if sub == Some("scale") {
                        to_scale(&v)
                    } else {
                        v
                    };
                    return Ok((code, v, warnings));
                }
            }
        }
        Err(ApiError::modified(r, name))
    }

    async fn bind(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        b: &Value,
    ) -> ApiResult<()> {
        let node = b
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::invalid(r, name, vec![FieldError::required("target.name")]))?;
        let (kv, cur) = self.get(r, ns, name).await?;
        if let Some(existing) = cur.pointer("/spec/nodeName").and_then(Value::as_str)
            && !existing.is_empty()
        {
            return Err(ApiError::conflict(
                r,
                name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                r,
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let mut new = cur.clone();
        new["spec"]["nodeName"] = json!(node);
        // As the real binding storage does: the pod is now scheduled.
        let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": skiff_k8s::time::now().to_string()});
        match new
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            Some(conds) => {
                conds.retain(|c| c["type"] != "PodScheduled");
                conds.push(scheduled);
            }
            None => new["status"]["conditions"] = json!([scheduled]),
        }
        self.store
            .update(&kv.key, encode_for(r, &new), kv.mod_revision)
            .await
            .map_err(|e| self.write_error(r, name, e))?;
        Ok(())
    }
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

/// A uid in the body of an update or patch is a precondition: the object it was meant for, not
/// a new one of the same name.
fn check_uid(r: &ResourceInfo, name: &str, new: &Value, cur: &Value) -> ApiResult<()> {
    match (
        meta_str(new, "uid").filter(|u| !u.is_empty()),
        meta_str(cur, "uid"),
    ) {
        (Some(want), Some(have)) if want != have => Err(ApiError::conflict(
            r,
            name,
            &format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
            ),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn encode_continue(key: &str, rev: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"k": key, "rv": rev}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(String, u64)> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["k"].as_str().ok_or_else(bad)?.to_string(),
        v["rv"].as_u64().ok_or_else(bad)?,
    ))
}

/// The autoscaling/v1 Scale view of a workload.
pub fn to_scale(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = obj
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    let mut meta = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(f) {
            meta[f] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

fn from_scale(r: &ResourceInfo, cur: &Value, scale: &Value) -> ApiResult<Value> {
    let name = meta_str(cur, "name").unwrap_or_default();
    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    if replicas.as_i64().is_none_or(|n| n < 0) {
        return Err(ApiError::invalid(
            r,
            name,
            vec![FieldError::invalid(
                "spec.replicas",
                &replicas,
                "must be greater than or equal to 0",
            )],
        ));
    }
    let mut new = cur.clone();
    new["spec"]["replicas"] = replicas;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_target("/api/v1/namespaces/default/pods/p/status")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("p"), Some("status"))
        );
        let t = parse_target("/api/v1/namespaces/default").unwrap().unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("default"))
        );
        let t = parse_target("/api/v1/namespaces/x/finalize")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let t = parse_target("/apis/apps/v1/deployments").unwrap().unwrap();
        assert_eq!(
            (t.res.plural, t.namespace.as_deref()),
            ("deployments", None)
        );
        let t = parse_target("/api/v1/nodes/n1").unwrap().unwrap();
        assert_eq!((t.res.plural, t.name.as_deref()), ("nodes", Some("n1")));
        assert!(parse_target("/api/v1/namespaces/d/bogus").unwrap().is_err());
        assert!(parse_target("/api/v1").is_none());
        assert!(
            parse_target("/apis/apps/v1/namespaces/d/deployments/x/scale")
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn paths_for_subresources() {
        let t = parse_target("/api/v1/namespaces/d/pods/p/binding")
            .unwrap()
            .unwrap();
        assert_eq!(t.sub.as_deref(), Some("binding"));
        assert!(
            parse_target("/api/v1/namespaces/d/configmaps/c/status")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn accept_negotiation() {
        let h = |a: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(a).unwrap());
            shape(&m)
        };
        assert_eq!(
            h("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            Shape::Table
        );
        assert_eq!(
            h("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            Shape::Metadata
        );
        assert_eq!(
            h("application/vnd.kubernetes.protobuf,application/json"),
            Shape::Object
        );
        assert_eq!(shape(&HeaderMap::new()), Shape::Object);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue("/registry/pods/a/b", 7);
        assert_eq!(
            decode_continue(&t).unwrap(),
            ("/registry/pods/a/b".to_string(), 7)
        );
        assert!(decode_continue("!!").is_err());
    }
}
