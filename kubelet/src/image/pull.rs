//! Pulling images from OCI distribution registries (oci-client): HTTPS with token (or basic)
//! auth, plain HTTP only for the registries named insecure; an index resolved to linux/amd64;
//! every manifest, config and layer checked against its digest; layers the store already has
//! are not fetched; per-layer progress in the log. Pull policies and `ensure` for the agent.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use base64::Engine;
use futures::StreamExt;
use oci_client::client::{
    Certificate, CertificateEncoding, ClientConfig, ClientProtocol, linux_amd64_resolver,
};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;

use super::digest::{HashState, sha256_digest, sha256_hex};
use super::records::LayerRecord;
use super::spec::{
    ConfigFile, Descriptor, Index, MAX_DOCUMENT_BYTES, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest, check_layer_count, is_index,
};
use super::store::{Image, ImageStore, Staging};
use super::{ImageError, parse_reference};

const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
];
/// Largest layer blob fetched.
const MAX_BLOB_BYTES: u64 = 32 << 30;
/// Layers fetched at once (containerd's default too).
const MAX_CONCURRENT_LAYERS: usize = 3;
/// A registry that does not answer within these fails the pull instead of holding it (and
/// the store's lock, which garbage collection waits for) forever.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One lock per image name, so that pods starting together wait for one pull of their image
/// instead of each pulling it.
pub(crate) type PullsInFlight = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Username and password by registry host (`host[:port]`, `docker.io` for Docker Hub).
    pub auth: BTreeMap<String, (String, String)>,
    /// `HOST:PORT` of registries reached over plain HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// PEM certificates trusted besides the system's roots (registries with a private CA).
    pub ca_certificates: Vec<Vec<u8>>,
}

impl PullOptions {
    /// Adds the credentials of an image pull secret: a `kubernetes.io/dockerconfigjson`
    /// Secret's `.dockerconfigjson` (`{"auths": {"host": {"username", "password"} or
    /// {"auth": base64("user:password")}}}`) or a `kubernetes.io/dockercfg` Secret's
    /// `.dockercfg` (the same map without the `auths` wrapper).
    pub fn add_docker_config_json(&mut self, json: &[u8]) -> Result<(), ImageError> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum DockerConfig {
            Wrapped { auths: BTreeMap<String, DockerAuth> },
            Legacy(BTreeMap<String, DockerAuth>),
        }
        #[derive(serde::Deserialize)]
        struct DockerAuth {
            username: Option<String>,
            password: Option<String>,
            auth: Option<String>,
        }
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| ImageError::content(".dockerconfigjson", e))?;
        let (DockerConfig::Wrapped { auths } | DockerConfig::Legacy(auths)) = config;
        for (server, entry) in auths {
            let credentials = match (entry.username, entry.password, entry.auth) {
                (Some(user), Some(password), _) => (user, password),
                (_, _, Some(auth)) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok())
                        .and_then(|d| {
                            d.split_once(':')
                                .map(|(u, p)| (u.to_string(), p.to_string()))
                        });
                    decoded.ok_or_else(|| {
                        ImageError::content(
                            ".dockerconfigjson",
                            format!("auths[{server:?}].auth is not base64 of user:password"),
                        )
                    })?
                }
                _ => continue,
            };
            self.auth.insert(registry_host(&server), credentials);
        }
        Ok(())
    }

    fn auth_for(&self, registry: &str) -> RegistryAuth {
        match self.auth.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// The registry host a docker config key names (`https://index.docker.io/v1/` → `docker.io`).
fn registry_host(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// When to pull, as a container's `imagePullPolicy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for an image without a tag or tagged `latest` (and no
    /// digest), else `IfNotPresent`.
    pub fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.split_once(':') {
            Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
            _ => PullPolicy::Always,
        }
    }

    /// From the pod spec's `imagePullPolicy` (None or empty: the default for the image).
    pub fn from_spec(policy: Option<&str>, image: &str) -> Result<PullPolicy, ImageError> {
        match policy.unwrap_or_default() {
            "" => Ok(PullPolicy::default_for(image)),
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            other => Err(ImageError::InvalidReference {
                reference: image.to_string(),
                reason: format!("unknown imagePullPolicy {other:?}"),
            }),
        }
    }
}

fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Another part of the process may have installed one already; either will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl ImageStore {
    /// Returns the image `reference` names, pulling it as `policy` says; callers asking for the
    /// same name at once wait for one pull (IfNotPresent callers then find the image). Errors:
    /// [`ImageError::NeverPull`] (the kubelet's `ErrImageNeverPull`) or the pull's error
    /// (`ErrImagePull`, with the registry's reason).
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        options: &PullOptions,
    ) -> Result<Image, ImageError> {
        let name = super::normalize_reference(reference)?;
        // An image already present is used without the pull lock, so that many containers of
        // one image start at once; only a pull, or the wait for one, takes it.
        if policy != PullPolicy::Always
            && let Some(image) = self.present(reference, policy).await?
        {
            return Ok(image);
        }
        let name_lock = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(pulls.entry(name).or_default())
        };
        let _one_pull_at_a_time = name_lock.lock().await;
        // Pulled meanwhile by the caller that held the lock.
        if policy != PullPolicy::Always
            && let Some(image) = self.present(reference, policy).await?
        {
            return Ok(image);
        }
        self.pull(reference, options).await
    }

    /// The image if the store holds it (marked used); `None` when it must be pulled, the
    /// `NeverPull` error when it may not be.
    async fn present(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<Option<Image>, ImageError> {
        let store = self.clone();
        let name = reference.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let image = store.lookup(&name)?;
            store.mark_used(&image.id)?;
            Ok::<_, ImageError>(image)
        })
        .await
        .expect("lookup does not panic");
        match found {
            Ok(image) => Ok(Some(image)),
            Err(ImageError::NotFound(_)) if policy == PullPolicy::Never => {
                Err(ImageError::NeverPull {
                    reference: reference.to_string(),
                })
            }
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pulls `reference` from its registry into the store.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image, ImageError> {
        ensure_crypto_provider();
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        let failed = |reason: String| ImageError::Pull {
            reference: name.clone(),
            reason,
        };
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            extra_root_certificates: options
                .ca_certificates
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        });
        let auth = options.auth_for(parsed.registry());
        let started = Instant::now();
        tracing::info!(image = %name, "pulling image");

        let (top_bytes, top_digest) = fetch_manifest(&client, &parsed, &auth, parsed.digest())
            .await
            .map_err(failed)?;
        let top: serde_json::Value = serde_json::from_slice(&top_bytes)
            .map_err(|e| failed(format!("manifest {top_digest}: {e}")))?;
        let media_type = top.get("mediaType").and_then(|m| m.as_str());
        let (manifest_bytes, manifest_digest) = if is_index(media_type, &top) {
            let index: Index = serde_json::from_slice(&top_bytes)
                .map_err(|e| failed(format!("index {top_digest}: {e}")))?;
            let entry = index
                .linux_amd64()
                .ok_or_else(|| failed(format!("index {top_digest} has no linux/amd64 image")))?;
            tracing::info!(image = %name, index = %top_digest, manifest = %entry.digest, "resolved linux/amd64");
            let by_digest = parsed.clone_with_digest(entry.digest.clone());
            fetch_manifest(&client, &by_digest, &auth, Some(&entry.digest))
                .await
                .map_err(failed)?
        } else {
            (top_bytes, top_digest.clone())
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| failed(format!("manifest {manifest_digest}: {e}")))?;

        if manifest.config.size > MAX_DOCUMENT_BYTES {
            return Err(failed(format!("config of {} bytes", manifest.config.size)));
        }
        let mut config_bytes = Vec::new();
        client
            .pull_blob(
                &parsed,
                &oci_descriptor(&manifest.config),
                &mut config_bytes,
            )
            .await
            .map_err(|e| failed(format!("config {}: {}", manifest.config.digest, reason(&e))))?;
        if sha256_digest(&config_bytes) != manifest.config.digest {
            return Err(failed(format!(
                "config {}: digest mismatch",
                manifest.config.digest
            )));
        }
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| failed(format!("config {}: {e}", manifest.config.digest)))?;
        check_layer_count(
            &format!("image config {}", manifest.config.digest),
            config.rootfs.diff_ids.len(),
            manifest.layers.len(),
        )
        .map_err(|e| failed(e.to_string()))?;

        let store = self.clone();
        let staging = Arc::new(
            tokio::task::spawn_blocking(move || store.staging())
                .await
                .expect("staging does not panic")?,
        );
        // Up to MAX_CONCURRENT_LAYERS layers at once, each fetched once even if the image
        // repeats it.
        let count = manifest.layers.len();
        let mut unique: Vec<(usize, Descriptor, String)> = Vec::new();
        for (i, (descriptor, diff_id)) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            sha256_hex(diff_id)?;
            sha256_hex(&descriptor.digest)?;
            if !unique.iter().any(|(_, _, seen)| seen == diff_id) {
                unique.push((i + 1, descriptor.clone(), diff_id.clone()));
            }
        }
        let layer_pull = LayerPull {
            client: &client,
            reference: &parsed,
            image: &name,
            staging: Arc::clone(&staging),
            count,
        };
        // Owned items collected first: a closure over borrowed items inside the stream would
        // make the future not Send (rustc's higher-ranked lifetime limitation).
        let fetches: Vec<_> = unique
            .into_iter()
            .map(|(number, descriptor, diff_id)| {
                let layer_pull = &layer_pull;
                async move {
                    let size = self
                        .fetch_layer(layer_pull, &descriptor, &diff_id, number)
                        .await?;
                    Ok::<_, ImageError>((diff_id, size))
                }
            })
            .collect();
        let sizes: HashMap<String, u64> = futures::stream::iter(fetches)
            .buffer_unordered(MAX_CONCURRENT_LAYERS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let layers = config
            .rootfs
            .diff_ids
            .iter()
            .map(|diff_id| LayerRecord {
                diff_id: diff_id.clone(),
                size: sizes[diff_id],
            })
            .collect();
        let config_digest = manifest.config.digest.clone();
        let tag_name = parsed
            .tag()
            .map(|tag| format!("{}/{}:{tag}", parsed.registry(), parsed.repository()));
        let repo_digest = format!("{}/{}@{top_digest}", parsed.registry(), parsed.repository());
        let store = self.clone();
        let image = tokio::task::spawn_blocking(move || {
            store.add_blob(&staging, &config_digest, &config_bytes)?;
            store.add_blob(&staging, &manifest_digest, &manifest_bytes)?;
            let names: Vec<String> = tag_name.into_iter().collect();
            store.record_image(
                &manifest_digest,
                &config_digest,
                layers,
                &names,
                vec![repo_digest],
            )
        })
        .await
        .expect("recording does not panic")?;
        tracing::info!(image = %name, id = %image.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(image)
    }

    /// One layer into the store: nothing if it is there, else downloaded into the pull's
    /// staging directory, verified and unpacked. Returns its size.
    async fn fetch_layer(
        &self,
        pull: &LayerPull<'_>,
        descriptor: &Descriptor,
        diff_id: &str,
        number: usize,
    ) -> Result<u64, ImageError> {
        let (image, count) = (pull.image, pull.count);
        if let Some(size) = self.layer_size(diff_id)? {
            tracing::info!(image, layer = %descriptor.digest, "layer {number}/{count} already present");
            return Ok(size);
        }
        let failed = |reason: String| ImageError::Pull {
            reference: image.to_string(),
            reason,
        };
        let staging = Arc::clone(&pull.staging);
        let blob = staging
            .path()
            .join(format!("{}.blob", sha256_hex(&descriptor.digest)?));
        download_layer(
            pull.client,
            pull.reference,
            descriptor,
            &blob,
            image,
            (number, count),
        )
        .await
        .map_err(failed)?;
        let (store, diff_id, digest) =
            (self.clone(), diff_id.to_string(), descriptor.digest.clone());
        let size = tokio::task::spawn_blocking(move || -> Result<u64, ImageError> {
            let file = std::fs::File::open(&blob).map_err(|e| ImageError::Io {
                context: format!("opening {}", blob.display()),
                source: e,
            })?;
            let size = store.add_layer(&staging, &diff_id, file, Some(&digest));
            let _ = std::fs::remove_file(&blob);
            size
        })
        .await
        .expect("unpacking does not panic")?;
        tracing::info!(image, layer = %descriptor.digest, bytes = size, "layer {number}/{count} unpacked");
        Ok(size)
    }
}

/// What the layer fetches of one pull share.
struct LayerPull<'a> {
    client: &'a Client,
    reference: &'a Reference,
    /// The image's name, for errors and the log.
    image: &'a str,
    staging: Arc<Staging>,
    /// Layers in the image.
    count: usize,
}

/// The registry's own words for a failure (`manifest unknown`), or the error with its causes
/// (a refused connection, an untrusted certificate).
fn reason(error: &OciDistributionError) -> String {
    match error {
        OciDistributionError::RegistryError { envelope, url } => {
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect();
            format!("{} ({url})", messages.join("; "))
        }
        OciDistributionError::UnauthorizedError { url } => {
            format!("unauthorized: the registry wants other credentials ({url})")
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text = format!("{text}: {cause_text}");
                }
                source = cause.source();
            }
            text
        }
    }
}

fn oci_descriptor(descriptor: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size as i64,
        ..OciDescriptor::default()
    }
}

/// A manifest or index, checked against `expected` (or against the digest the registry names).
async fn fetch_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    expected: Option<&str>,
) -> Result<(Vec<u8>, String), String> {
    let (bytes, registry_digest) = client
        .pull_manifest_raw(reference, auth, ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| reason(&e))?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(format!("manifest of {} bytes", bytes.len()));
    }
    let digest = sha256_digest(&bytes);
    let wanted = expected.unwrap_or(&registry_digest);
    if digest != wanted {
        return Err(format!(
            "manifest digest mismatch: expected {wanted}, got {digest}"
        ));
    }
    Ok((bytes.to_vec(), digest))
}

/// Streams a layer blob into `path`, checking its size and digest, logging progress.
async fn download_layer(
    client: &Client,
    reference: &Reference,
    descriptor: &Descriptor,
    path: &std::path::Path,
    image: &str,
    (number, count): (usize, usize),
) -> Result<(), String> {
    let started = Instant::now();
    tracing::info!(image, layer = %descriptor.digest, bytes = descriptor.size, "pulling layer {number}/{count}");
    let limit = descriptor.size.min(MAX_BLOB_BYTES);
    let mut hash = HashState::new(limit);
    let mut stream = client
        .pull_blob_stream(reference, &oci_descriptor(descriptor))
        .await
        .map_err(|e| format!("layer {}: {}", descriptor.digest, reason(&e)))?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut received = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("layer {}: {e}", descriptor.digest))?;
        hash.update(&chunk)
            .map_err(|e| format!("layer {}: {e}", descriptor.digest))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        received += chunk.len() as u64;
        // A line for every quarter of a large layer.
        if descriptor.size >= 4 << 20 && received - reported >= descriptor.size / 4 {
            reported = received;
            tracing::info!(image, layer = %descriptor.digest, received, total = descriptor.size, "pulling layer {number}/{count}");
        }
    }
    // The blob only lives until it is unpacked (and the unpacked layer is synced): flushed,
    // not synced.
    file.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    hash.verify(&format!("layer {}", descriptor.digest), &descriptor.digest)
        .map_err(|e| e.to_string())?;
    tracing::info!(
        image,
        layer = %descriptor.digest,
        bytes = received,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pulled layer {number}/{count}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent spawns pulls as tokio tasks.
    #[test]
    fn pull_futures_are_send() {
        fn spawnable<T: Send + 'static>(_: T) {}
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        spawnable(async move {
            let options = PullOptions::default();
            store
                .ensure("busybox", PullPolicy::IfNotPresent, &options)
                .await
        });
    }

    #[test]
    fn default_pull_policy_as_kube() {
        assert_eq!(PullPolicy::default_for("busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::default_for("busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for("busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::default_for("127.0.0.1:5000/app"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for("127.0.0.1:5000/app:2"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::default_for(
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            ),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_spec(Some("Never"), "x").unwrap(),
            PullPolicy::Never
        );
        assert!(PullPolicy::from_spec(Some("Sometimes"), "x").is_err());
    }

    #[test]
    fn docker_config_json_credentials() {
        let mut options = PullOptions::default();
        options
            .add_docker_config_json(
                br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                    "reg.example:5000":{"username":"a","password":"b"}}}"#,
            )
            .unwrap();
        assert_eq!(
            options.auth["docker.io"],
            ("user".to_string(), "pass".to_string())
        );
        assert!(
            matches!(options.auth_for("reg.example:5000"), RegistryAuth::Basic(u, _) if u == "a")
        );
        assert!(matches!(options.auth_for("other"), RegistryAuth::Anonymous));
        options
            .add_docker_config_json(br#"{"legacy.example":{"auth":"bDpw"}}"#)
            .unwrap();
        assert_eq!(
            options.auth["legacy.example"],
            ("l".to_string(), "p".to_string())
        );
        assert!(options.add_docker_config_json(b"[1]").is_err());
    }
}
