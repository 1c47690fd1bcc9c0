//! A certificate from the cluster through a CertificateSigningRequest (`certificates.k8s.io/v1`),
//! as client-go's `certificate/csr` package does it for the kubelet: a fresh ECDSA P-256 key, a
//! PKCS#10 request for the subject and names wanted, posted for a signer, then watched until it
//! is approved and signed (or denied, or failed). The key never leaves the caller.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

/// The signer of node client certificates (CN `system:node:<name>`, O `system:nodes`).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node serving certificates (the node API on 10250).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("making the key or the certificate request: {0}")]
    Request(#[from] rcgen::Error),
    #[error("creating the CertificateSigningRequest: {0}")]
    Create(#[source] kube::Error),
    #[error("watching CertificateSigningRequest {name}: {detail}")]
    Watch { name: String, detail: String },
    #[error("CertificateSigningRequest {name} was {condition}: {message}")]
    Refused {
        name: String,
        condition: String,
        message: String,
    },
    #[error("CertificateSigningRequest {name} was not signed within {waited:?}")]
    Timeout { name: String, waited: Duration },
    #[error("CertificateSigningRequest {name} was deleted before it was signed")]
    Deleted { name: String },
    #[error("the certificate is not PEM: {0}")]
    NotPem(String),
}

/// What to ask a signer for.
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    pub signer_name: String,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// `spec.usages`, as the API spells them (`digital signature`, `client auth`, …).
    pub usages: Vec<String>,
    /// `spec.expirationSeconds`; `None` lets the signer choose.
    pub expiration: Option<Duration>,
}

impl CertificateRequest {
    /// A node's client certificate: CN `system:node:<node>`, O `system:nodes`, for client auth.
    pub fn node_client(node: &str) -> CertificateRequest {
        CertificateRequest {
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".into()],
            dns_names: Vec::new(),
            ips: Vec::new(),
            usages: vec!["digital signature".into(), "client auth".into()],
            expiration: None,
        }
    }

    /// A node's serving certificate for its node API, naming `dns_names` and `ips`.
    pub fn node_serving(node: &str, dns_names: Vec<String>, ips: Vec<IpAddr>) -> Self {
        CertificateRequest {
            signer_name: KUBELET_SERVING_SIGNER.into(),
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".into()],
            dns_names,
            ips,
            usages: vec!["digital signature".into(), "server auth".into()],
            expiration: None,
        }
    }

    /// The PKCS#10 request (PEM) for this subject and these names, signed with `key`.
    fn pem(&self, key: &KeyPair) -> Result<String, rcgen::Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.common_name.as_str());
        for o in &self.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        params.distinguished_name = dn;
        for name in &self.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        params
            .subject_alt_names
            .extend(self.ips.iter().copied().map(SanType::IpAddress));
        params.serialize_request(key)?.pem()
    }
}

/// A signed certificate and its key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
    /// The CertificateSigningRequest it came through.
    pub request_name: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("request_name", &self.request_name)
            .finish_non_exhaustive()
    }
}

/// Asks for `request` with a fresh key and waits up to `timeout` for the certificate.
pub async fn request_certificate(
    client: &Client,
    request: &CertificateRequest,
    timeout: Duration,
) -> Result<IssuedCertificate, CertificateError> {
    let key = KeyPair::generate()?;
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.pem(&key)?.into_bytes()),
            signer_name: request.signer_name.clone(),
            usages: Some(request.usages.clone()),
            expiration_seconds: request
                .expiration
                .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
            ..Default::default()
        },
        status: None,
    };
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(CertificateError::Create)?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(csr = %name, signer = %request.signer_name, cn = %request.common_name, "certificate requested");
    let settled = |o: Option<&CertificateSigningRequest>| o.is_none_or(|o| outcome(o).is_some());
    let done = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, &name, settled),
    )
    .await
    .map_err(|_| CertificateError::Timeout {
        name: name.clone(),
        waited: timeout,
    })?
    .map_err(|e| CertificateError::Watch {
        name: name.clone(),
        detail: e.to_string(),
    })?;
    let Some(done) = done else {
        return Err(CertificateError::Deleted { name });
    };
    match outcome(&done) {
        Some(Ok(pem)) => Ok(IssuedCertificate {
            certificate_pem: pem,
            key_pem: key.serialize_pem(),
            request_name: name,
        }),
        Some(Err((condition, message))) => Err(CertificateError::Refused {
            name,
            condition,
            message,
        }),
        None => Err(CertificateError::Deleted { name }),
    }
}

/// The certificate (PEM) once issued, or the Denied/Failed condition that ends the request.
fn outcome(o: &CertificateSigningRequest) -> Option<Result<String, (String, String)>> {
    let status = o.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
    {
        return Some(Err((
            c.type_.clone(),
            c.message.clone().unwrap_or_default(),
        )));
    }
    match &status.certificate {
        Some(ByteString(pem)) if !pem.is_empty() => {
            Some(Ok(String::from_utf8_lossy(pem).into_owned()))
        }
        _ => None,
    }
}

/// When a certificate (the first of a PEM chain) starts and stops being valid.
pub fn validity(certificate_pem: &str) -> Result<(SystemTime, SystemTime), CertificateError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|e| CertificateError::NotPem(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertificateError::NotPem(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_client_request_names_the_node_and_nothing_else() {
        let key = KeyPair::generate().unwrap();
        let pem = CertificateRequest::node_client("n1").pem(&key).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let dn = format!("{:?}", parsed.params.distinguished_name);
        assert!(
            dn.contains("system:node:n1") && dn.contains("system:nodes"),
            "{dn}"
        );
        assert!(parsed.params.subject_alt_names.is_empty());
    }

    #[test]
    fn a_serving_request_carries_the_names_asked_for() {
        let key = KeyPair::generate().unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let pem = CertificateRequest::node_serving("n1", vec!["n1".into()], vec![ip])
            .pem(&key)
            .unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(parsed.params.subject_alt_names.len(), 2);
        assert!(
            parsed
                .params
                .subject_alt_names
                .contains(&SanType::IpAddress(ip))
        );
    }

    #[test]
    fn validity_reads_the_certificates_window() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["x".to_string()]).unwrap();
        p.not_before = time::OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000).unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        let (from, to) = validity(&pem).unwrap();
        assert_eq!(
            from,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
        );
        assert_eq!(to, SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000));
    }
}
