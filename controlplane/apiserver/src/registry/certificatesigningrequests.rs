//! CertificateSigningRequest (`certificates.k8s.io/v1`, `certificatesigningrequests`): the
//! requestor's identity is recorded from the request's user, the PEM request must parse and
//! carry a valid signature, the spec never changes; `/approval` changes only the Approved and
//! Denied conditions, for those who may `approve` for the signer, and `/status` the rest of the
//! status (`auth::csr` approves and signs).

use super::prelude::*;
use crate::auth::csr;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "certificates.k8s.io",
    version: "v1",
    kind: "CertificateSigningRequest",
    plural: "certificatesigningrequests",
    singular: "certificatesigningrequest",
    namespaced: false,
    short_names: &["csr"],
    categories: &[],
    subresources: &["status", "approval"],
    storage: "certificatesigningrequests",
    schema: "io.k8s.api.certificates.v1.CertificateSigningRequest",
    strategy: &CsrStrategy,
};

struct CsrStrategy;

impl Strategy for CsrStrategy {
    /// The requestor is whoever creates it, whatever the body says.
    fn admit_create<'a>(
        &'a self,
        _api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        if let Some(user) = crate::auth::current_user() {
            let spec = &mut o["spec"];
            if spec.is_object() {
                spec["username"] = json!(user.name);
                spec["groups"] = json!(user.groups);
                match user.uid.as_str() {
                    "" => {
                        spec.as_object_mut().map(|s| s.remove("uid"));
                    }
                    uid => spec["uid"] = json!(uid),
                }
                match user.extra.is_empty() {
                    true => {
                        spec.as_object_mut().map(|s| s.remove("extra"));
                    }
                    false => spec["extra"] = json!(user.extra),
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    /// `/approval` changes only the Approved and Denied conditions, and only for a requestor
    /// holding `approve` on the request's signer (`signers` in `certificates.k8s.io`, named by
    /// the signer or `<domain>/*`), as kube-apiserver's CertificateApproval admission requires;
    /// `/status` changes the rest of the status but never those two conditions.
    fn admit_subresource_update<'a>(
        &'a self,
        api: &'a ApiServer,
        sub: &'a str,
        cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<bool>> {
        Box::pin(async move {
            let decision = |c: &&Value| matches!(c["type"].as_str(), Some("Approved" | "Denied"));
            let conditions = |o: &Value, want_decisions: bool| -> Vec<Value> {
                o.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|c| decision(c) == want_decisions)
                    .cloned()
                    .collect()
            };
            let (decided, others) = match sub {
                "approval" => {
                    approver_check(api, cur)?;
                    (conditions(new, true), conditions(cur, false))
                }
                "status" => (conditions(cur, true), conditions(new, false)),
                _ => return Ok(false),
            };
            let status = new.get("status").cloned();
            *new = cur.clone();
            if sub == "status" {
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        new.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            }
            let all: Vec<Value> = others.into_iter().chain(decided).collect();
            if !all.is_empty() {
                new["status"]["conditions"] = json!(all);
            } else if let Some(status) = new["status"].as_object_mut() {
                status.remove("conditions");
            }
            Ok(true)
        })
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        let spec = &o["spec"];
        match spec["request"].as_str() {
            None | Some("") => errs.push(FieldError::required("spec.request")),
            Some(r) => {
                if let Err(e) = csr::parse_request(r) {
                    errs.push(FieldError::invalid("spec.request", &json!("<request>"), e));
                }
            }
        }
        match spec["signerName"].as_str() {
            None | Some("") => errs.push(FieldError::required("spec.signerName")),
            Some(s) if !s.contains('/') => errs.push(FieldError::invalid(
                "spec.signerName",
                &json!(s),
                "must be a fully qualified domain and path of the form 'example.com/signer-name'",
            )),
            _ => {}
        }
        if spec["usages"].as_array().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required("spec.usages"));
        }
        if let Some(secs) = spec["expirationSeconds"].as_i64()
            && secs < 600
        {
            errs.push(FieldError::invalid(
                "spec.expirationSeconds",
                &json!(secs),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
        for (i, c) in o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")) {
                errs.push(FieldError::not_supported(
                    format!("status.conditions[{i}].type"),
                    &c["type"],
                    &["Approved", "Denied", "Failed"],
                ));
            }
        }
        let has = |t: &str| {
            o["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == t))
        };
        if has("Approved") && has("Denied") {
            errs.push(FieldError::invalid(
                "status.conditions",
                &json!("Approved"),
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable("spec", old, new, errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.signerName"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            AGE,
            ("SignerName", "string", 0, "The signer of the request."),
            ("Requestor", "string", 0, "Who made the request."),
            (
                "RequestedDuration",
                "string",
                0,
                "The lifetime the requestor asked for.",
            ),
            (
                "Condition",
                "string",
                0,
                "Approved, Denied, Issued or Pending.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let duration = o["spec"]["expirationSeconds"]
            .as_i64()
            .map_or("<none>".to_string(), human_duration);
        vec![
            json!(s(o, "/metadata/name")),
            age(o),
            json!(s(o, "/spec/signerName")),
            json!(s(o, "/spec/username")),
            json!(duration),
            json!(csr::condition_summary(o)),
        ]
    }
}

/// Whether the requestor (none: the server itself) may approve or deny requests for `o`'s signer.
fn approver_check(api: &ApiServer, o: &Value) -> ApiResult<()> {
    use crate::auth::attributes::{Attributes, ResourceAttributes};
    let Some(user) = crate::auth::current_user() else {
        return Ok(());
    };
    let signer = o["spec"]["signerName"].as_str().unwrap_or_default();
    let may = |name: String| {
        api.authorize(
            &user,
            &Attributes::Resource(ResourceAttributes {
                verb: "approve".into(),
                group: "certificates.k8s.io".into(),
                version: "*".into(),
                resource: "signers".into(),
                name,
                ..Default::default()
            }),
        )
        .allowed
    };
    let domain_wildcard = signer.split_once('/').map(|(d, _)| format!("{d}/*"));
    if may(signer.to_string()) || domain_wildcard.is_some_and(may) {
        return Ok(());
    }
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    Err(crate::status::ApiError::forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\""
    ))
    .with_details(&RESOURCE, name))
}
