//! The cluster's certificates: a CA, the API server's serving certificate and the admin client
//! certificate (group `system:masters`), plus `admin.kubeconfig` and the kubeconfigs of the
//! in-server scheduler and controllers (their own users, not administrators). Made on first start, reused after;
//! the serving certificate is re-issued when the wanted names or addresses change. Lifetimes are
//! kubeadm's: the CA 10 years, every certificate it signs here 1 year; one in the last fifth of
//! its lifetime is re-issued at start, and the serving certificate also while the server runs
//! ([`RotatingServingCert`]).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: invalid PEM: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Invalid(String),
}

const CA_CN: &str = "skiff-ca";

/// The cluster CA's lifetime.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// The lifetime of the certificates the server issues itself (serving, admin, its clients).
const LEAF_LIFETIME: time::Duration = time::Duration::days(365);
/// A certificate with less than this left is re-issued: the last fifth of its lifetime.
const RENEW_WITHIN: time::Duration = time::Duration::days(73);

/// Sets `lifetime` from now, backdated a little for clocks slightly behind this one.
fn valid_for(p: &mut CertificateParams, lifetime: time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + lifetime;
}

/// The certificate's expiry, from the first PEM certificate in `path`; `None` when there is no
/// readable certificate.
pub fn expiry(path: &Path) -> Option<time::OffsetDateTime> {
    pem_expiry(&fs::read(path).ok()?)
}

/// The expiry of the first certificate in `pem`.
fn pem_expiry(pem: &[u8]) -> Option<time::OffsetDateTime> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = der.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// The expiry of the client certificate embedded in a kubeconfig's text.
pub fn kubeconfig_expiry(kubeconfig: &str) -> Option<time::OffsetDateTime> {
    let b64 = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    pem_expiry(&pem)
}

/// Whether the certificate at `path` is missing, unreadable or in its last fifth.
fn due_for_renewal(path: &Path) -> bool {
    expiry(path).is_none_or(|t| t - time::OffsetDateTime::now_utc() < RENEW_WITHIN)
}

/// The kubeconfig (under the data directory) and user of the scheduler running in the server.
pub const SCHEDULER_KUBECONFIG: (&str, &str) = ("scheduler.kubeconfig", "system:kube-scheduler");
/// The kubeconfig and user of the controllers running in the server.
pub const CONTROLLER_MANAGER_KUBECONFIG: (&str, &str) = (
    "controller-manager.kubeconfig",
    "system:kube-controller-manager",
);

/// Paths of the files under the data directory.
pub struct Pki {
    dir: PathBuf,
}

/// Writes `data` to `path` atomically (temp file, fsync, rename), mode 0600 when `private`.
pub fn write(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, CA_CN);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// The names and addresses the serving certificate carries.
pub fn serving_sans(listen: SocketAddr, first_service_ip: IpAddr) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
    {
        dns.push(h.to_string());
    }
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), first_service_ip];
    if !listen.ip().is_unspecified() {
        ips.push(listen.ip());
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                ips.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                let ip = v6.ip();
                // Link-local addresses need a zone and are useless in a certificate.
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    ips.push(IpAddr::V6(ip));
                }
            }
        }
    }
    ips.sort();
    ips.dedup();
    dns.sort();
    dns.dedup();
    (dns, ips)
}

/// What the server needs from the PKI at start.
pub struct ServingMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The client certificate the API server presents to kubelets.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

/// The kubelet-client certificate's user, as kube-apiserver's (group `system:masters`).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Issues a client certificate for `cn` in group `system:masters` unless both files exist.
fn issue_client_certificate(
    issuer: &Issuer<'_, KeyPair>,
    crt: &Path,
    key_path: &Path,
    cn: &str,
) -> Result<(), PkiError> {
    if key_path.exists() && !due_for_renewal(crt) {
        return Ok(());
    }
    tracing::info!(cn, "issuing client certificate (O=system:masters)");
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    valid_for(&mut p, LEAF_LIFETIME);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    write(key_path, key.serialize_pem().as_bytes(), true)?;
    write(crt, cert.pem().as_bytes(), false)
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The cluster CA as an issuer, for the CSR signer.
    pub fn ca_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_key = KeyPair::from_pem(&read(&self.path("ca.key"))?)?;
        Ok(Issuer::new(ca_params()?, ca_key))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes the cluster CA unless it exists; returns its key.
    pub fn ensure_ca(&self) -> Result<KeyPair, PkiError> {
        fs::create_dir_all(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (ca_crt, ca_key_path) = (self.path("ca.crt"), self.path("ca.key"));
        if ca_crt.exists() && ca_key_path.exists() {
            return Ok(KeyPair::from_pem(&read(&ca_key_path)?)?);
        }
        tracing::info!(dir = %self.dir.display(), "creating cluster CA");
        let key = KeyPair::generate()?;
        let mut params = ca_params()?;
        valid_for(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        write(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
        write(&ca_crt, cert.pem().as_bytes(), false)?;
        self.forget_issued();
        Ok(key)
    }

    /// Removes what the CA signed, after the CA changed, so that it is issued again.
    pub fn forget_issued(&self) {
        for stale in [
            "apiserver.crt",
            "admin.crt",
            "admin.kubeconfig",
            "kubelet-client.crt",
        ] {
            let _ = fs::remove_file(self.path(stale));
        }
    }

    /// Makes or re-issues whatever certificate is missing or due (CA, serving, admin and
    /// kubelet-client certificates, `admin.kubeconfig`, the in-server components' kubeconfigs)
    /// and returns the serving material: what a server does at start and twice a day while it
    /// runs. `server_url` is what the kubeconfigs point at.
    pub fn renew_certificates(
        &self,
        listen: SocketAddr,
        first_service_ip: IpAddr,
        server_url: &str,
    ) -> Result<ServingMaterial, PkiError> {
        let ca_key = self.ensure_ca()?;
        let ca_pem = read(&self.path("ca.crt"))?;
        let issuer = Issuer::new(ca_params()?, ca_key);

        // Serving certificate, re-issued when the SANs changed.
        let (dns, ips) = serving_sans(listen, first_service_ip);
        let sans_record = format!("{dns:?} {ips:?}");
        let (srv_crt, srv_key, srv_sans) = (
            self.path("apiserver.crt"),
            self.path("apiserver.key"),
            self.path("apiserver.sans"),
        );
        let current = fs::read_to_string(&srv_sans).unwrap_or_default();
        if !(srv_key.exists() && current == sans_record && !due_for_renewal(&srv_crt)) {
            tracing::info!(?dns, ?ips, "issuing API server serving certificate");
            let mut p = CertificateParams::new(dns.clone())?;
            valid_for(&mut p, LEAF_LIFETIME);
            p.distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            p.subject_alt_names
                .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            write(&srv_key, key.serialize_pem().as_bytes(), true)?;
            write(&srv_crt, cert.pem().as_bytes(), false)?;
            write(&srv_sans, sans_record.as_bytes(), false)?;
        }

        // Admin client certificate and kubeconfig.
        let (adm_crt, adm_key) = (self.path("admin.crt"), self.path("admin.key"));
        issue_client_certificate(&issuer, &adm_crt, &adm_key, "kubernetes-admin")?;
        // What the API server presents to the kubelets it proxies to (logs, exec, port-forward).
        let (kc_crt, kc_key) = (
            self.path("kubelet-client.crt"),
            self.path("kubelet-client.key"),
        );
        issue_client_certificate(&issuer, &kc_crt, &kc_key, KUBELET_CLIENT_CN)?;
        let kubeconfig = kubeconfig(
            server_url,
            &ca_pem,
            "admin",
            &read(&adm_crt)?,
            &read(&adm_key)?,
        );
        let kc_path = self.path("admin.kubeconfig");
        if fs::read_to_string(&kc_path).ok().as_deref() != Some(kubeconfig.as_str()) {
            write(&kc_path, kubeconfig.as_bytes(), true)?;
        }
        // The in-server components' own identities (their bootstrap ClusterRoles are bound to
        // these users), re-issued when due or when the server's address changed; each component
        // follows its file (see `skiff server`).
        for (file, user) in [SCHEDULER_KUBECONFIG, CONTROLLER_MANAGER_KUBECONFIG] {
            let path = self.path(file);
            let current = fs::read_to_string(&path).unwrap_or_default();
            let same_server = current
                .lines()
                .any(|l| l.trim().strip_prefix("server: ") == Some(server_url));
            let due = kubeconfig_expiry(&current)
                .is_none_or(|t| t - time::OffsetDateTime::now_utc() < RENEW_WITHIN);
            if due || !same_server {
                let kc = self.user_kubeconfig(user, &[], Some(server_url))?;
                write(&path, kc.as_bytes(), true)?;
            }
        }
        Ok(ServingMaterial {
            ca_pem,
            cert_pem: read(&srv_crt)?,
            key_pem: read(&srv_key)?,
            kubelet_client_cert_pem: read(&kc_crt)?,
            kubelet_client_key_pem: read(&kc_key)?,
        })
    }
}

/// A kubeconfig for `server_url` with one user (`user_name`) and its client certificate.
pub fn kubeconfig(
    server_url: &str,
    ca_pem: &str,
    user_name: &str,
    cert: &str,
    key: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\nusers:\n- name: {user_name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: {user_name}\ncurrent-context: skiff\n",
        b64(ca_pem),
        b64(cert),
        b64(key)
    )
}

/// The O (organization) attribute: a second group goes in under the same OID as a custom type,
/// since rcgen keeps one value per attribute type.
const ORGANIZATION_OID: &[u64] = &[2, 5, 4, 10];

impl Pki {
    /// A kubeconfig for `user` in `groups` (a client certificate with CN=user, O=group, signed
    /// by the cluster CA in this directory), pointing at `server_url` or, when `None`, at the
    /// server `admin.kubeconfig` names.
    pub fn user_kubeconfig(
        &self,
        user: &str,
        groups: &[String],
        server_url: Option<&str>,
    ) -> Result<String, PkiError> {
        if user.is_empty() {
            return Err(PkiError::Invalid("the user name may not be empty".into()));
        }
        if groups.len() > 2 {
            return Err(PkiError::Invalid(format!(
                "at most two groups can be put in a certificate, got {}",
                groups.len()
            )));
        }
        let ca_pem = read(&self.path("ca.crt"))?;
        let ca_key = KeyPair::from_pem(&read(&self.path("ca.key"))?)?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let server = match server_url {
            Some(s) => s.to_string(),
            None => {
                let admin = self.path("admin.kubeconfig");
                read(&admin)?
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("server: "))
                    .map(str::to_string)
                    .ok_or_else(|| PkiError::Pem {
                        path: admin,
                        detail: "names no server".into(),
                    })?
            }
        };
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        valid_for(&mut p, LEAF_LIFETIME);
        p.distinguished_name.push(DnType::CommonName, user);
        for (i, g) in groups.iter().enumerate() {
            let ty = if i == 0 {
                DnType::OrganizationName
            } else {
                DnType::CustomDnType(ORGANIZATION_OID.to_vec())
            };
            p.distinguished_name.push(ty, g.as_str());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(kubeconfig(
            &server,
            &ca_pem,
            user,
            &cert.pem(),
            &key.serialize_pem(),
        ))
    }
}

/// A PEM that did not parse, named by the file it came from.
fn pem_err(what: &str, e: rustls::pki_types::pem::Error) -> PkiError {
    PkiError::Pem {
        path: PathBuf::from(what),
        detail: e.to_string(),
    }
}

impl ServingMaterial {
    /// The serving certificate followed by the CA (a joining node fetches the CA from here
    /// without trusting it and checks it against its join token's hash), with its key.
    fn certified_key(
        &self,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<rustls::sign::CertifiedKey, PkiError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("apiserver.crt", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| pem_err("apiserver.key", e))?;
        rustls::sign::CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| PkiError::Tls(e.to_string()))
    }

    /// A rustls server configuration (ring provider) that offers h2 and HTTP/1.1 and asks for,
    /// but does not require, a client certificate signed by the cluster CA: requests without one
    /// are refused later with 401, except the health and version endpoints. The serving
    /// certificate comes from the returned [`RotatingServingCert`], which a renewal replaces.
    pub fn server_config(
        &self,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<RotatingServingCert>), PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| pem_err("ca.crt", e))?)
                .map_err(|e| PkiError::Tls(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
        let serving = Arc::new(RotatingServingCert {
            current: std::sync::RwLock::new(Arc::new(self.certified_key(&provider)?)),
            provider: provider.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(serving.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((Arc::new(config), serving))
    }
}

/// The serving certificate every handshake presents; replacing it changes what the next
/// handshakes get, without a restart and without touching open connections.
#[derive(Debug)]
pub struct RotatingServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RotatingServingCert {
    /// Presents `material`'s certificate from the next handshake on.
    pub fn replace(&self, material: &ServingMaterial) -> Result<(), PkiError> {
        let key = Arc::new(material.certified_key(&self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The certificate handshakes present now (DER).
    pub fn current(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).cert[0].clone()
    }
}

impl rustls::server::ResolvesServerCert for RotatingServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days_left(path: &Path) -> i64 {
        (expiry(path).expect("a certificate") - time::OffsetDateTime::now_utc()).whole_days()
    }

    fn renew(pki: &Pki) -> ServingMaterial {
        let listen = SocketAddr::from(([127, 0, 0, 1], 6443));
        pki.renew_certificates(
            listen,
            IpAddr::from([10, 96, 0, 1]),
            "https://127.0.0.1:6443",
        )
        .expect("ensure")
    }

    #[test]
    fn the_ca_lives_ten_years_and_what_it_signs_one() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        renew(&pki);
        assert!((3649..=3650).contains(&days_left(&pki.path("ca.crt"))));
        for f in ["apiserver.crt", "admin.crt", "kubelet-client.crt"] {
            assert!((364..=365).contains(&days_left(&pki.path(f))), "{f}");
        }
    }

    #[test]
    fn a_certificate_in_its_last_fifth_is_reissued_and_served_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let (_, serving) = renew(&pki).server_config().unwrap();
        // Replace the serving and admin certificates with ones that end in 10 days.
        let issuer = pki.ca_issuer().unwrap();
        for (crt, key) in [
            ("apiserver.crt", "apiserver.key"),
            ("admin.crt", "admin.key"),
        ] {
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            valid_for(&mut p, time::Duration::days(10));
            let k = KeyPair::generate().unwrap();
            let cert = p.signed_by(&k, &issuer).unwrap();
            write(&pki.path(key), k.serialize_pem().as_bytes(), true).unwrap();
            write(&pki.path(crt), cert.pem().as_bytes(), false).unwrap();
        }
        assert_eq!(days_left(&pki.path("apiserver.crt")), 9);
        let before = serving.current();
        let material = renew(&pki);
        assert!(days_left(&pki.path("apiserver.crt")) >= 364);
        assert!(days_left(&pki.path("admin.crt")) >= 364);
        // A certificate with time left is kept.
        let kept = fs::read(pki.path("apiserver.crt")).unwrap();
        renew(&pki);
        assert_eq!(fs::read(pki.path("apiserver.crt")).unwrap(), kept);
        serving.replace(&material).unwrap();
        assert_ne!(serving.current(), before);
        let (_, der) = x509_parser::pem::parse_x509_pem(&kept).unwrap();
        assert_eq!(serving.current().as_ref(), der.contents.as_slice());
    }

    #[test]
    fn a_components_kubeconfig_is_reissued_when_due_or_when_the_server_moved() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        renew(&pki);
        let path = pki.path(SCHEDULER_KUBECONFIG.0);
        let first = fs::read_to_string(&path).unwrap();
        let days = |kc: &str| {
            (kubeconfig_expiry(kc).expect("a certificate") - time::OffsetDateTime::now_utc())
                .whole_days()
        };
        assert!((364..=365).contains(&days(&first)));
        // Time left and the same server: kept.
        renew(&pki);
        assert_eq!(fs::read_to_string(&path).unwrap(), first);
        // In its last fifth: re-issued.
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        valid_for(&mut p, time::Duration::days(10));
        p.distinguished_name
            .push(DnType::CommonName, SCHEDULER_KUBECONFIG.1);
        let k = KeyPair::generate().unwrap();
        let cert = p.signed_by(&k, &pki.ca_issuer().unwrap()).unwrap();
        let ca = read(&pki.path("ca.crt")).unwrap();
        let url = "https://127.0.0.1:6443";
        let short = kubeconfig(url, &ca, "s", &cert.pem(), &k.serialize_pem());
        write(&path, short.as_bytes(), true).unwrap();
        assert_eq!(days(&short), 9);
        renew(&pki);
        let renewed = fs::read_to_string(&path).unwrap();
        assert!(days(&renewed) >= 364);
        // Another address for the server: re-issued for it.
        pki.renew_certificates(
            "127.0.0.1:7443".parse().unwrap(),
            IpAddr::from([10, 96, 0, 1]),
            "https://127.0.0.1:7443",
        )
        .unwrap();
        let moved = fs::read_to_string(&path).unwrap();
        assert!(moved.contains("server: https://127.0.0.1:7443"));
    }
}
