//! The pod sandbox as the pod worker uses it: the pod's pinned namespaces (`network::Sandbox`),
//! its address on the pod network (`network::NodeNetwork`; the node's for hostNetwork pods), its
//! hostPorts, the pause process holding the shared PID namespace of a pod with
//! `shareProcessNamespace` (`shim::pause`), and the files bind-mounted into every container (/etc/hosts, /etc/resolv.conf,
//! /etc/hostname) under `<root-dir>/pods/<uid>`. Made once per pod, found again after a kubelet
//! restart, removed with the pod.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::Instrument;

use crate::network::pod_files::{DnsSettings, NodeFilesSettings, PodFiles, ResolvConf};
use crate::network::{self, HostPortMapping, NetworkError, SandboxOptions};
use crate::node_network::NetworkHandle;
use crate::oci_config::SandboxView;

/// How long a pod on the pod network waits for the network (the node's podCIDR) at most per try.
const NETWORK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the pod network is not ready (the node has no podCIDR yet)")]
    NetworkNotReady,
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("sandbox: {0}")]
    Join(String),
    #[error("the pod's shared PID namespace: {0}")]
    Pause(String),
}

/// A pod's sandbox, ready for its containers.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub view: SandboxView,
    pub pod_ip: String,
}

/// What every pod's sandbox is made with.
pub struct Sandboxes {
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub node_ip: IpAddr,
    pub cluster_domain: String,
    pub files: NodeFilesSettings,
    pub network: NetworkHandle,
    /// The shim binary, which also runs pause processes (shareProcessNamespace).
    pub shim_path: PathBuf,
    /// Pod uid → its hostPort mappings; the node's rules are the union.
    host_ports: Mutex<HashMap<String, Vec<HostPortMapping>>>,
}

pub fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

impl Sandboxes {
    pub fn new(
        root_dir: PathBuf,
        run_dir: PathBuf,
        node_ip: IpAddr,
        cluster_dns: Vec<IpAddr>,
        cluster_domain: String,
        network: NetworkHandle,
        shim_path: PathBuf,
    ) -> Sandboxes {
        let files = NodeFilesSettings {
            dns: DnsSettings {
                cluster_dns,
                cluster_domain: cluster_domain.clone(),
                host: ResolvConf::parse(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ),
            },
            node_hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            node_hosts: std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        };
        Sandboxes {
            root_dir,
            run_dir,
            node_ip,
            cluster_domain,
            files,
            network,
            shim_path,
            host_ports: Mutex::new(HashMap::new()),
        }
    }

    /// Makes (or finds again) the pod's sandbox.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    pub async fn ensure(&self, pod: &Pod) -> Result<Sandbox, SandboxError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let options = SandboxOptions::for_pod(pod, &self.cluster_domain)?;
        let host_network = options.host_network;
        let net = if host_network {
            None
        } else {
            let mut rx = self.network.clone();
            let ready = tokio::time::timeout(NETWORK_WAIT, rx.wait_for(|n| n.is_some())).await;
            match ready {
                Ok(Ok(n)) => n.clone(),
                _ => return Err(SandboxError::NetworkNotReady),
            }
        };
        let run_dir = self.run_dir.clone();
        let id = uid.clone();
        let pinned =
            tokio::task::spawn_blocking(move || match network::Sandbox::open(&run_dir, &id)? {
                Some(s) => Ok(s),
                None => network::Sandbox::create(&run_dir, &id, &options),
            })
            .instrument(tracing::debug_span!("namespaces"))
            .await
            .map_err(|e| SandboxError::Join(e.to_string()))??;
        let pod_ip: IpAddr = match (&net, pinned.net_path()) {
            (Some(net), Some(path)) => {
                let ip: Ipv4Addr = net.attach(&uid, &path).await?;
                let mappings = HostPortMapping::for_pod(pod, ip)?;
                self.set_host_ports(net, &uid, mappings).await?;
                IpAddr::V4(ip)
            }
            _ => self.node_ip,
        };
        let dir = pod_dir(&self.root_dir, &uid);
        let pod_ips = if host_network { vec![] } else { vec![pod_ip] };
        let files = PodFiles::for_pod(pod, &pod_ips, &self.files)?;
        crate::blocking::run(|| files.write_to(&dir))?;
        let mut namespaces: Vec<(String, Option<PathBuf>)> = pinned
            .namespaces()
            .into_iter()
            .map(|(kind, path)| (kind.oci_type().to_string(), Some(path)))
            .collect();
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false)
        {
            let pid_ns = crate::shim::pause::ensure(&self.shim_path, pinned.dir(), &uid)
                .await
                .map_err(SandboxError::Pause)?;
            namespaces.push(("pid".to_string(), Some(pid_ns)));
        }
        Ok(Sandbox {
            view: SandboxView {
                hostname: files.hostname.trim().to_string(),
                hosts_file: dir.join("hosts"),
                resolv_conf: dir.join("resolv.conf"),
                hostname_file: dir.join("hostname"),
                namespaces,
            },
            pod_ip: pod_ip.to_string(),
        })
    }

    async fn set_host_ports(
        &self,
        net: &network::NodeNetwork,
        uid: &str,
        mappings: Vec<HostPortMapping>,
    ) -> Result<(), NetworkError> {
        let all: Vec<HostPortMapping> = {
            let mut ports = self.host_ports.lock().expect("host ports");
            let unchanged = ports
                .get(uid)
                .map_or(mappings.is_empty(), |m| *m == mappings);
            if unchanged {
                return Ok(());
            }
            if mappings.is_empty() {
                ports.remove(uid);
            } else {
                ports.insert(uid.to_string(), mappings);
            }
            ports.values().flatten().cloned().collect()
        };
        net.set_host_ports(&all).await
    }

    /// Removes the pod's sandbox: hostPorts, address and veth, pinned namespaces, files.
    pub async fn remove(&self, uid: &str) {
        let net = self.network.borrow().clone();
        if let Some(net) = net {
            if let Err(e) = self.set_host_ports(&net, uid, vec![]).await {
                tracing::warn!(pod = %uid, "hostPorts: {e}");
            }
            if let Err(e) = net.detach(uid).await {
                tracing::warn!(pod = %uid, "pod network: {e}");
            }
        }
        if let Ok(dir) = network::Sandbox::dir_of(&self.run_dir, uid) {
            crate::shim::pause::stop(&dir, uid);
        }
        if let Err(e) = network::Sandbox::remove_by_uid(&self.run_dir, uid) {
            tracing::warn!(pod = %uid, "sandbox: {e}");
        }
        // Volumes first: nothing may be deleted through a mount still under the pod directory.
        if let Err(e) = crate::volumes::cleanup(&self.root_dir, uid) {
            tracing::warn!(pod = %uid, "volumes: {e}");
            return;
        }
        let dir = pod_dir(&self.root_dir, uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }

    /// The pods that have a sandbox on the node.
    pub fn uids(&self) -> Vec<String> {
        network::Sandbox::list_uids(&self.run_dir).unwrap_or_default()
    }
}
