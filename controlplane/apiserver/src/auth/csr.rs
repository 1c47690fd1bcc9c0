//! CertificateSigningRequests approved and signed inside the API server, which holds the cluster
//! CA (kube-controller-manager's csrapproving and csrsigning controllers): a bootstrapper's node
//! client request (CN `system:node:<x>`, O `system:nodes`), a node renewing its own client
//! certificate, and a node's serving request naming only its own addresses are approved
//! automatically when the requestor may (`certificatesigningrequests/nodeclient`,
//! `…/selfnodeclient`, `…/selfnodeserving` in RBAC); approved requests for the three
//! `kubernetes.io/` signers are checked against their signer's rules and signed for
//! `spec.expirationSeconds`, at most the signing duration (a year unless the server is told).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::{Value, json};

use super::UserInfo;
use super::attributes::{Attributes, ResourceAttributes};
use crate::ApiServer;
use crate::handlers::WriteOptions;
use crate::object::{decode_kv, meta_str};
use crate::resources::{self, ResourceInfo};
use crate::status::ApiError;

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The longest lifetime the signer gives by default (kube-controller-manager's
/// `--cluster-signing-duration`).
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far before now a certificate's validity starts, so clocks a little behind accept it
/// (kube's signer back-dates by five minutes); a tenth of the lifetime at most, so a short
/// certificate is not mostly spent before it is issued.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";

/// What a PEM request asks for.
#[derive(Debug)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// SANs other than DNS names and addresses (e-mail, URI, other names).
    pub other_sans: usize,
    params: CertificateSigningRequestParams,
}

/// Parses `spec.request` (base64 of a PEM `CERTIFICATE REQUEST`) and checks its signature.
pub fn parse_request(b64: &str) -> Result<Request, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "not PEM text".to_string())?;
    let params = CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("cannot parse the certificate request: {e}"))?;
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM block: {e}"))?;
    let (_, parsed) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&der.contents)
        .map_err(|e| format!("cannot parse the certificate request: {e}"))?;
    let subject = &parsed.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| {
        a.as_str().map(str::to_string).unwrap_or_default()
    };
    let mut r = Request {
        common_name: subject
            .iter_common_name()
            .map(text)
            .next()
            .unwrap_or_default(),
        organizations: subject.iter_organization().map(text).collect(),
        dns_names: Vec::new(),
        ips: Vec::new(),
        other_sans: 0,
        params,
    };
    for san in &r.params.params.subject_alt_names {
        match san {
            SanType::DnsName(n) => r.dns_names.push(n.as_str().to_string()),
            SanType::IpAddress(ip) => r.ips.push(*ip),
            _ => r.other_sans += 1,
        }
    }
    Ok(r)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn has_condition(o: &Value, t: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] != "False"))
}

/// `Approved,Issued`, `Pending`, as `kubectl get csr` shows the state.
pub fn condition_summary(o: &Value) -> String {
    let mut parts: Vec<&str> = ["Approved", "Denied", "Failed"]
        .into_iter()
        .filter(|t| has_condition(o, t))
        .collect();
    if o["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        parts.push("Issued");
    }
    if parts.is_empty() {
        "Pending".into()
    } else {
        parts.join(",")
    }
}

/// Whether `usages` holds only `allowed` and includes `required`.
fn usages_fit(usages: &[String], allowed: &[&str], required: &str) -> bool {
    usages.iter().all(|u| allowed.contains(&u.as_str())) && usages.iter().any(|u| u == required)
}

const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// Why the signer refuses to sign `o` for its signer, if it does (kube's signer validation).
fn signer_refusal(signer: &str, usages: &[String], r: &Request) -> Option<String> {
    let node_subject =
        r.common_name.starts_with(NODE_PREFIX) && r.organizations == [NODES_GROUP.to_string()];
    match signer {
        CLIENT if !usages_fit(usages, CLIENT_USAGES, "client auth") => {
            Some("usages must include client auth and be among digital signature, key encipherment, client auth".into())
        }
        KUBELET_CLIENT => {
            if !node_subject {
                Some(format!("subject must be CN {NODE_PREFIX}<name>, O {NODES_GROUP}"))
            } else if r.other_sans + r.dns_names.len() + r.ips.len() > 0 {
                Some("no subject alternative names are allowed".into())
            } else if !usages_fit(usages, CLIENT_USAGES, "client auth") {
                Some("usages must include client auth and be among digital signature, key encipherment, client auth".into())
            } else {
                None
            }
        }
        KUBELET_SERVING => {
            if !node_subject {
                Some(format!("subject must be CN {NODE_PREFIX}<name>, O {NODES_GROUP}"))
            } else if r.other_sans > 0 {
                Some("only DNS and IP subject alternative names are allowed".into())
            } else if r.dns_names.is_empty() && r.ips.is_empty() {
                Some("at least one DNS or IP subject alternative name is required".into())
            } else if !usages_fit(usages, SERVING_USAGES, "server auth") {
                Some("usages must include server auth and be among digital signature, key encipherment, server auth".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Signs `r` for `usages` with the CA, valid for `lifetime` seconds.
fn sign(
    issuer: &Issuer<'static, KeyPair>,
    r: &Request,
    usages: &[String],
    lifetime: Duration,
) -> Result<String, rcgen::Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, r.common_name.as_str());
    for o in &r.organizations {
        p.distinguished_name
            .push(DnType::OrganizationName, o.as_str());
    }
    p.subject_alt_names = r.params.params.subject_alt_names.clone();
    let now = time::OffsetDateTime::now_utc();
    let backdate = BACKDATE.min(lifetime / 10);
    p.not_before = now - backdate;
    p.not_after = now + lifetime;
    p.serial_number = Some(SerialNumber::from_slice(
        uuid::Uuid::new_v4().as_bytes().as_slice(),
    ));
    for u in usages {
        match u.as_str() {
            "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            "client auth" => p
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => p
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth),
            _ => {}
        }
    }
    let csr = CertificateSigningRequestParams {
        params: p,
        public_key: r.params.public_key.clone(),
    };
    Ok(csr.signed_by(issuer)?.pem())
}

fn resource() -> &'static ResourceInfo {
    resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").expect("served")
}

/// The requestor of `o`, as its spec records it.
fn requestor(o: &Value) -> UserInfo {
    UserInfo {
        name: o["spec"]["username"].as_str().unwrap_or_default().into(),
        uid: o["spec"]["uid"].as_str().unwrap_or_default().into(),
        groups: strings(&o["spec"]["groups"]),
        extra: Default::default(),
    }
}

/// Whether the requestor may have `o` approved automatically: it asks for what the
/// `certificatesigningrequests/<sub>` permission it holds covers.
async fn auto_approvable(app: &ApiServer, o: &Value, r: &Request) -> bool {
    let signer = o["spec"]["signerName"].as_str().unwrap_or_default();
    let usages = strings(&o["spec"]["usages"]);
    if signer_refusal(signer, &usages, r).is_some() {
        return false;
    }
    let user = requestor(o);
    let sub = match signer {
        KUBELET_CLIENT if user.name == r.common_name => "selfnodeclient",
        KUBELET_CLIENT => "nodeclient",
        KUBELET_SERVING if user.name == r.common_name => {
            let node = r.common_name.trim_start_matches(NODE_PREFIX);
            if !names_only_own_addresses(app, node, r).await {
                return false;
            }
            "selfnodeserving"
        }
        _ => return false,
    };
    let a = Attributes::Resource(ResourceAttributes {
        verb: "create".into(),
        group: "certificates.k8s.io".into(),
        version: "v1".into(),
        resource: "certificatesigningrequests".into(),
        subresource: sub.into(),
        ..Default::default()
    });
    app.authorize(&user, &a).allowed
}

/// Whether every SAN of a serving request is one of `node`'s addresses or its hostname.
async fn names_only_own_addresses(app: &ApiServer, node: &str, r: &Request) -> bool {
    let nodes = resources::find("", "v1", "nodes").expect("served");
    let Ok((_, n)) = app.get(nodes, None, node).await else {
        return false;
    };
    let addresses: Vec<String> = n["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["address"].as_str())
        .map(str::to_string)
        .collect();
    r.dns_names.iter().all(|d| addresses.contains(d))
        && r.ips.iter().all(|ip| {
            addresses
                .iter()
                .any(|a| a.parse::<IpAddr>().ok() == Some(*ip))
        })
}

fn condition(t: &str, reason: &str, message: &str) -> Value {
    let now = skiff_k8s::time::now().to_string();
    json!({"type": t, "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": now})
}

/// One step for `o`: approve it automatically, or sign it once approved.
async fn reconcile(
    app: &ApiServer,
    issuer: &Issuer<'static, KeyPair>,
    max_lifetime: Duration,
    o: Value,
) -> Result<(), ApiError> {
    let name = meta_str(&o, "name").unwrap_or_default().to_string();
    let signer = o["spec"]["signerName"].as_str().unwrap_or_default();
    if ![CLIENT, KUBELET_CLIENT, KUBELET_SERVING].contains(&signer)
        || has_condition(&o, "Denied")
        || has_condition(&o, "Failed")
        || o["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    {
        return Ok(());
    }
    let Ok(req) = parse_request(o["spec"]["request"].as_str().unwrap_or_default()) else {
        return Ok(());
    };
    let opts = WriteOptions::default();
    if !has_condition(&o, "Approved") {
        if auto_approvable(app, &o, &req).await {
            let mut new = o.clone();
            let mut conditions = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let message = match signer {
                KUBELET_SERVING => {
                    "Auto approving self kubelet server certificate after SubjectAccessReview."
                }
                _ => "Auto approving kubelet client certificate after SubjectAccessReview.",
            };
            conditions.push(condition("Approved", "AutoApproved", message));
            new["status"]["conditions"] = json!(conditions);
            app.update(resource(), None, &name, new, Some("approval"), &opts)
                .await?;
            tracing::info!(csr = %name, "auto-approved");
        }
        return Ok(());
    }
    let usages = strings(&o["spec"]["usages"]);
    let mut new = o.clone();
    match signer_refusal(signer, &usages, &req) {
        Some(why) => {
            let mut conditions = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.push(condition("Failed", "SignerValidationFailure", &why));
            new["status"]["conditions"] = json!(conditions);
            tracing::info!(csr = %name, reason = %why, "refusing to sign");
        }
        None => {
            let lifetime = o["spec"]["expirationSeconds"]
                .as_u64()
                .map_or(max_lifetime, Duration::from_secs)
                .min(max_lifetime);
            let pem = sign(issuer, &req, &usages, lifetime)
                .map_err(|e| ApiError::internal(format!("signing {name}: {e}")))?;
            new["status"]["certificate"] =
                json!(base64::engine::general_purpose::STANDARD.encode(pem));
            tracing::info!(csr = %name, cn = %req.common_name, ?lifetime, "signed");
        }
    }
    app.update(resource(), None, &name, new, Some("status"), &opts)
        .await?;
    Ok(())
}

/// Approves and signs every request now and as they come (from the requests' watch).
/// No certificate lives longer than `max_lifetime`.
pub fn start(app: Arc<ApiServer>, issuer: Issuer<'static, KeyPair>, max_lifetime: Duration) {
    let prefix = resource().prefix(None);
    let issuer = Arc::new(issuer);
    tokio::spawn(async move {
        loop {
            // Everything present, then the changes after it; again after a watch ends.
            let Ok(res) = app.store.range(&prefix, None, 0).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            for kv in &res.kvs {
                if let Ok(o) = decode_kv(kv)
                    && let Err(e) = reconcile(&app, &issuer, max_lifetime, o).await
                {
                    tracing::debug!(error = %e.message, "CSR");
                }
            }
            let after = res.revision;
            match app.store.watch(&prefix, after).await {
                Ok(mut events) => {
                    while let Some(Ok(ev)) = events.next().await {
                        if ev.kind != skiff_store::EventKind::Put {
                            continue;
                        }
                        if let Ok(o) = decode_kv(&ev.kv)
                            && let Err(e) = reconcile(&app, &issuer, max_lifetime, o).await
                        {
                            tracing::debug!(error = %e.message, "CSR");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CSR watch"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
