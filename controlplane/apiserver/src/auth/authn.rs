//! Authentication: who sent a request. A client certificate the TLS layer verified against the
//! cluster CA names the user in its subject's CN and the groups in its O values, as
//! kube-apiserver's x509 authenticator reads them; otherwise an `Authorization: Bearer` token
//! (a bootstrap token or a service-account token); otherwise the request is anonymous.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, header};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::UserInfo;
use crate::ApiServer;

/// The user a verified client certificate names, and until when the certificate holds.
#[derive(Debug, Clone)]
pub struct CertificateUser {
    pub user: UserInfo,
    pub not_after: SystemTime,
}

/// The user a verified client certificate names; `None` when it names none (no CN).
pub fn from_certificate(der: &[u8]) -> Option<CertificateUser> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map_or(SystemTime::UNIX_EPOCH, |s| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s)
        });
    Some(CertificateUser {
        user: UserInfo::authenticated(name, groups),
        not_after,
    })
}

/// The outcome of looking at a request's credentials.
#[derive(Debug)]
pub enum Identity {
    User(UserInfo),
    Anonymous,
    /// Credentials were presented and are not valid: 401.
    Invalid,
}

/// Authenticates a request: the connection's certificate user first, then a bearer token.
pub async fn authenticate(
    app: &ApiServer,
    certificate_user: Option<&CertificateUser>,
    headers: &HeaderMap,
) -> Identity {
    // The handshake checked the certificate when the connection opened; its expiry is checked
    // again for every request, as kube-apiserver verifies the chain per request, so a kept-alive
    // connection does not outlive its certificate.
    if let Some(c) = certificate_user {
        if SystemTime::now() >= c.not_after {
            tracing::debug!(user = %c.user.name, "client certificate expired");
            return Identity::Invalid;
        }
        return Identity::User(c.user.clone());
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Identity::Anonymous;
    };
    let token = match auth.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) {
        Some(t) if !t.trim().is_empty() => t.trim(),
        // kube-apiserver ignores an Authorization header that is not a bearer token.
        _ => return Identity::Anonymous,
    };
    if let Some((id, secret)) = super::bootstrap_tokens::parse(token) {
        return match app.verify_bootstrap_token(id, secret).await {
            Some(user) => Identity::User(user),
            None => Identity::Invalid,
        };
    }
    match app.verify_token(token, &[]).await {
        Ok(user) => Identity::User(user),
        Err(e) => {
            tracing::debug!(error = %e, "bearer token refused");
            Identity::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn certificate_subject_names_user_and_groups() {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "alice");
        p.distinguished_name.push(DnType::OrganizationName, "dev");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let u = from_certificate(cert.der()).unwrap().user;
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "system:authenticated"]);
    }

    #[test]
    fn issued_user_certificates_carry_their_groups() {
        use base64::Engine;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::new(dir.path());
        pki.renew_certificates(
            "127.0.0.1:6443".parse().unwrap(),
            "10.96.0.1".parse().unwrap(),
            "https://127.0.0.1:6443",
        )
        .unwrap();
        let kc = pki
            .user_kubeconfig("alice", &["dev".into(), "ops".into()], None)
            .unwrap();
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        let data = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
            .unwrap();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let u = from_certificate(&der).unwrap().user;
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "ops", "system:authenticated"]);
    }
}
