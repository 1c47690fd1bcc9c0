//! The review APIs and TokenRequest, answered from the request's user, the RBAC policy in
//! memory and the token issuer; nothing is stored. The request object comes back with its
//! `status` filled, as kube-apiserver returns it (201).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::attributes::{Attributes, ResourceAttributes};
use super::rbac::Rule;
use super::{UserInfo, tokens};
use crate::ApiServer;
use crate::handlers::{Target, decode_body};
use crate::status::{ApiError, ApiResult};

fn created(v: &Value) -> Response {
    let mut r = (
        StatusCode::CREATED,
        serde_json::to_vec(v).expect("serialisable"),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The attributes a SubjectAccessReview spec asks about.
fn spec_attributes(spec: &Value) -> ApiResult<Attributes> {
    let s = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_string();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes::Resource(ResourceAttributes {
            verb: s(r, "verb"),
            group: s(r, "group"),
            version: s(r, "version"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            namespace: s(r, "namespace"),
            name: s(r, "name"),
        }));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes::NonResource {
            verb: s(n, "verb"),
            path: s(n, "path"),
        });
    }
    Err(ApiError::bad_request(
        "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn answer(mut review: Value, status: Value) -> Value {
    review["status"] = status;
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review
}

fn access_status(app: &ApiServer, user: &UserInfo, a: &Attributes) -> Value {
    let d = app.authorize(user, a);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    status
}

fn rules_status(rules: &[Rule]) -> Value {
    let (urls, resources): (Vec<&Rule>, Vec<&Rule>) =
        rules.iter().partition(|r| !r.non_resource_urls.is_empty());
    let resource_rules: Vec<Value> = resources
        .iter()
        .map(|r| {
            let mut v =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            v
        })
        .collect();
    let non_resource_rules: Vec<Value> = urls
        .iter()
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// Serves `t` when it is a review or a TokenRequest; `None` for every other resource.
pub async fn serve(
    app: &ApiServer,
    user: &UserInfo,
    t: &Target,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let is_token = t.res.plural == "serviceaccounts" && t.sub.as_deref() == Some("token");
    let is_review = matches!(
        t.res.group,
        "authentication.k8s.io" | "authorization.k8s.io"
    );
    if !is_token && !is_review {
        return None;
    }
    if *method != Method::POST {
        return Some(ApiError::method_not_allowed().into_response());
    }
    let result = async {
        let review = decode_body(headers, &axum::body::Bytes::copy_from_slice(body))?;
        if is_token {
            let ns = t.namespace.as_deref().unwrap_or_default();
            let name = t.name.as_deref().unwrap_or_default();
            super::node::admit_token_request(app, user, ns, name, &review)?;
            return app.token_request(ns, name, &review).await;
        }
        let spec = review["spec"].clone();
        Ok(match t.res.plural {
            "selfsubjectreviews" => answer(review, json!({"userInfo": user.to_json()})),
            "tokenreviews" => {
                let token = spec["token"].as_str().unwrap_or_default();
                let audiences: Vec<String> =
                    serde_json::from_value(spec["audiences"].clone()).unwrap_or_default();
                let status = match app.verify_token(token, &audiences).await {
                    Ok(u) => {
                        let aud = if audiences.is_empty() {
                            vec![tokens::ISSUER.to_string()]
                        } else {
                            audiences
                        };
                        json!({"authenticated": true, "user": u.to_json(), "audiences": aud})
                    }
                    Err(e) => json!({"authenticated": false, "error": e.to_string()}),
                };
                answer(review, status)
            }
            "selfsubjectaccessreviews" => {
                let a = spec_attributes(&spec)?;
                let status = access_status(app, user, &a);
                answer(review, status)
            }
            "subjectaccessreviews" | "localsubjectaccessreviews" => {
                let mut a = spec_attributes(&spec)?;
                if t.res.namespaced {
                    let ns = t.namespace.clone().unwrap_or_default();
                    match &mut a {
                        Attributes::Resource(r) if r.namespace.is_empty() || r.namespace == ns => {
                            r.namespace = ns
                        }
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "spec.resourceAttributes.namespace must match namespace: {ns}"
                            )));
                        }
                    }
                }
                let subject = UserInfo::from_json(&spec);
                let status = access_status(app, &subject, &a);
                answer(review, status)
            }
            "selfsubjectrulesreviews" => {
                let ns = spec["namespace"].as_str().unwrap_or_default();
                let rules = app.rbac.policy().rules_for(user, ns);
                answer(review, rules_status(&rules))
            }
            _ => return Err(ApiError::not_found_path()),
        })
    }
    .await;
    Some(match result {
        Ok(v) => created(&v),
        Err(e) => e.into_response(),
    })
}
