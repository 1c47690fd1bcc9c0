//! Service address and NodePort allocations shared by every server on one store: bitmaps kept
//! as kube-apiserver's RangeAllocation objects at `/registry/ranges/serviceips` (the primary
//! Service CIDR), `/registry/ranges/secondaryserviceips` (the other family's, on a dual-stack
//! cluster) and `/registry/ranges/servicenodeports`. A claim or a release is a read-modify-write guarded by
//! the key's mod_revision and retried on conflict, so that servers sharing an etcd (or the
//! embedded store) never hand one address to two Services. [`alloc`](crate::alloc) picks the
//! addresses; this module records them.
//!
//! A server killed between claiming and writing its Service leaks what it claimed; the repair
//! pass ([`Repair`], kube-apiserver's repair controllers) frees a leak it has seen in two passes
//! in a row, and sets the bits of Services the bitmaps miss (a store written before the bitmaps
//! existed).

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use skiff_store::{KeyValue, Store, StoreError};

use crate::alloc::{InUse, NetworkConfig};
use crate::object::decode_kv;
use crate::resources;
use crate::status::{ApiError, ApiResult};

pub const SERVICE_IPS_KEY: &str = "/registry/ranges/serviceips";
pub const SECONDARY_SERVICE_IPS_KEY: &str = "/registry/ranges/secondaryserviceips";
pub const NODE_PORTS_KEY: &str = "/registry/ranges/servicenodeports";

/// Attempts at a guarded write before giving up (each lost one means another server wrote).
const WRITE_ATTEMPTS: usize = 50;

/// One bit per address of a range, bit `i` for the range's `i`-th address.
#[derive(Debug, Default, Clone, PartialEq)]
struct Bitmap(Vec<u8>);

impl Bitmap {
    fn get(&self, i: u32) -> bool {
        self.0
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn set(&mut self, i: u32, on: bool) {
        let byte = (i / 8) as usize;
        if byte >= self.0.len() {
            if !on {
                return;
            }
            self.0.resize(byte + 1, 0);
        }
        if on {
            self.0[byte] |= 1 << (i % 8);
        } else {
            self.0[byte] &= !(1 << (i % 8));
        }
    }

    fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(byte, b)| {
            (0..8)
                .filter(move |bit| b & (1 << bit) != 0)
                .map(move |bit| byte as u32 * 8 + bit)
        })
    }

    /// Trailing zero bytes dropped, so that equal sets encode equally.
    fn trimmed(mut self) -> Self {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        self
    }
}

/// Which of the ranges: the `n`-th Service CIDR's addresses, or the NodePorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ServiceIps(usize),
    NodePorts,
}

impl Kind {
    fn all(net: &NetworkConfig) -> impl Iterator<Item = Kind> {
        (0..net.service_cidrs.len())
            .map(Kind::ServiceIps)
            .chain([Kind::NodePorts])
    }

    fn key(self) -> &'static str {
        match self {
            Kind::ServiceIps(0) => SERVICE_IPS_KEY,
            Kind::ServiceIps(_) => SECONDARY_SERVICE_IPS_KEY,
            Kind::NodePorts => NODE_PORTS_KEY,
        }
    }

    /// The range as kube-apiserver records it: a CIDR, or `MIN-MAX` for ports.
    fn range(self, net: &NetworkConfig) -> String {
        match self {
            Kind::ServiceIps(n) => net.service_cidrs[n].cidr(),
            Kind::NodePorts => format!("{}-{}", net.node_port_min, net.node_port_max),
        }
    }

    /// The offsets of what `held` holds in this range (ones outside it are not recorded).
    fn offsets(self, net: &NetworkConfig, held: &InUse) -> Vec<u32> {
        match self {
            Kind::ServiceIps(n) => held
                .ips
                .iter()
                .filter_map(|ip| net.service_cidrs[n].offset(ip))
                .collect(),
            Kind::NodePorts => held
                .node_ports
                .iter()
                .filter(|p| {
                    (i64::from(net.node_port_min)..=i64::from(net.node_port_max)).contains(p)
                })
                .map(|p| (p - i64::from(net.node_port_min)) as u32)
                .collect(),
        }
    }

    fn add_to(self, net: &NetworkConfig, offset: u32, to: &mut InUse) {
        match self {
            Kind::ServiceIps(n) => {
                to.ips.insert(net.service_cidrs[n].at(offset));
            }
            Kind::NodePorts => {
                to.node_ports
                    .insert(i64::from(net.node_port_min) + i64::from(offset));
            }
        }
    }
}

/// What `a` holds that `b` does not.
pub fn minus(a: &InUse, b: &InUse) -> InUse {
    InUse {
        ips: a.ips.difference(&b.ips).copied().collect(),
        node_ports: a.node_ports.difference(&b.node_ports).copied().collect(),
    }
}

/// The two bitmaps of one store.
pub struct ServiceRanges<'a> {
    store: &'a dyn Store,
    net: &'a NetworkConfig,
}

impl<'a> ServiceRanges<'a> {
    pub fn new(store: &'a dyn Store, net: &'a NetworkConfig) -> Self {
        Self { store, net }
    }

    async fn read(&self, kind: Kind) -> ApiResult<(Option<KeyValue>, Bitmap)> {
        let Some(kv) = self.store.get(kind.key()).await? else {
            return Ok((None, Bitmap::default()));
        };
        let bad = |why: String| ApiError::internal(format!("{}: {why}", kind.key()));
        let obj: Value = serde_json::from_slice(&kv.value).map_err(|e| bad(e.to_string()))?;
        let want = kind.range(self.net);
        if obj["range"].as_str() != Some(want.as_str()) {
            return Err(bad(format!(
                "the stored range {} is not this server's {want}: every server must be started with the same ranges",
                obj["range"]
            )));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(obj["data"].as_str().unwrap_or_default())
            .map_err(|e| bad(e.to_string()))?;
        Ok((Some(kv), Bitmap(data)))
    }

    /// Applies `change` to the bitmap and writes it, guarded by its mod_revision, re-reading and
    /// re-applying after another server's write. `change` answers false to leave it as it is.
    async fn modify(
        &self,
        kind: Kind,
        mut change: impl FnMut(&mut Bitmap) -> bool,
    ) -> ApiResult<bool> {
        for attempt in 0..WRITE_ATTEMPTS {
            let (kv, old) = self.read(kind).await?;
            let mut new = old.clone();
            if !change(&mut new) {
                return Ok(false);
            }
            let new = new.trimmed();
            if kv.is_some() && new == old.trimmed() {
                return Ok(true);
            }
            let name = kind.key().rsplit('/').next().unwrap_or_default();
            let value = json!({
                "apiVersion": "v1", "kind": "RangeAllocation",
                "metadata": {"name": name},
                "range": kind.range(self.net),
                "data": base64::engine::general_purpose::STANDARD.encode(&new.0),
            });
            let bytes = serde_json::to_vec(&value).expect("JSON values serialise");
            let written = match &kv {
                Some(kv) => self.store.update(kind.key(), bytes, kv.mod_revision).await,
                None => self.store.create(kind.key(), bytes).await,
            };
            match written {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                    // Another writer won: step aside a little, more after each loss, so that
                    // many at once do not keep colliding.
                    let ms = rand::Rng::random_range(&mut rand::rng(), 0..=2 * attempt as u64);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::internal(format!(
            "{}: gave up after {WRITE_ATTEMPTS} conflicting writes",
            kind.key()
        )))
    }

    /// Everything allocated, as recorded.
    pub async fn snapshot(&self) -> ApiResult<InUse> {
        let mut all = InUse::default();
        for kind in Kind::all(self.net) {
            let (_, bits) = self.read(kind).await?;
            for i in bits.ones() {
                kind.add_to(self.net, i, &mut all);
            }
        }
        Ok(all)
    }

    /// Records `want` as allocated; false (and nothing recorded) when another writer took one
    /// of them first.
    pub async fn claim(&self, want: &InUse) -> ApiResult<bool> {
        let mut done = InUse::default();
        for kind in Kind::all(self.net) {
            let offsets = kind.offsets(self.net, want);
            if offsets.is_empty() {
                continue;
            }
            let take = |b: &mut Bitmap| {
                if offsets.iter().any(|i| b.get(*i)) {
                    return false;
                }
                offsets.iter().for_each(|i| b.set(*i, true));
                true
            };
            if !self.modify(kind, take).await? {
                self.release(&done).await;
                return Ok(false);
            }
            for i in offsets {
                kind.add_to(self.net, i, &mut done);
            }
        }
        Ok(true)
    }

    /// Frees `held`. A failure leaves a leak for the repair pass, so it is logged, not returned.
    pub async fn release(&self, held: &InUse) {
        for kind in Kind::all(self.net) {
            let offsets = kind.offsets(self.net, held);
            if offsets.is_empty() {
                continue;
            }
            let clear = |b: &mut Bitmap| {
                offsets.iter().for_each(|i| b.set(*i, false));
                true
            };
            if let Err(e) = self.modify(kind, clear).await {
                tracing::warn!(range = kind.key(), error = %e.message, "releasing Service allocations; the repair pass will");
            }
        }
    }
}

/// kube-apiserver's repair controllers for both ranges: sets the bits of every Service's
/// allocations and frees bits no Service holds once seen so in two passes in a row (a pass
/// sees a claim whose Service is still being written as a leak, never in two passes minutes
/// apart).
#[derive(Default)]
pub struct Repair {
    suspected: InUse,
}

impl Repair {
    pub async fn pass(&mut self, store: &dyn Store, net: &NetworkConfig) -> ApiResult<()> {
        let services = resources::find("", "v1", "services").expect("services are served");
        let mut held = InUse::default();
        let mut start: Option<String> = None;
        loop {
            let page = store
                .range(&services.prefix(None), start.as_deref(), 500)
                .await?;
            for kv in &page.kvs {
                held.add(&decode_kv(kv)?);
            }
            start = page.kvs.last().map(|kv| kv.key.clone());
            if !page.more {
                break;
            }
        }
        let ranges = ServiceRanges::new(store, net);
        let mut leaked = InUse::default();
        for kind in Kind::all(net) {
            let held_bits: HashSet<u32> = kind.offsets(net, &held).into_iter().collect();
            let suspected: HashSet<u32> = kind.offsets(net, &self.suspected).into_iter().collect();
            let mut seen = InUse::default();
            ranges
                .modify(kind, |b| {
                    seen = InUse::default();
                    for i in &held_bits {
                        b.set(*i, true);
                    }
                    let leaks: Vec<u32> = b.ones().filter(|i| !held_bits.contains(i)).collect();
                    for i in leaks {
                        if suspected.contains(&i) {
                            b.set(i, false);
                        } else {
                            kind.add_to(net, i, &mut seen);
                        }
                    }
                    true
                })
                .await?;
            leaked.ips.extend(seen.ips);
            leaked.node_ports.extend(seen.node_ports);
        }
        let freed = minus(&self.suspected, &leaked);
        if !freed.ips.is_empty() || !freed.node_ports.is_empty() {
            tracing::info!(ips = ?freed.ips, node_ports = ?freed.node_ports, "freed leaked Service allocations");
        }
        self.suspected = leaked;
        Ok(())
    }
}

/// Repairs at start (before serving) and then every `interval`.
pub async fn start_repair(
    store: std::sync::Arc<dyn Store>,
    net: NetworkConfig,
    interval: Duration,
) -> ApiResult<()> {
    let mut repair = Repair::default();
    repair.pass(store.as_ref(), &net).await?;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(e) = repair.pass(store.as_ref(), &net).await {
                tracing::warn!(error = %e.message, "repairing Service allocations");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_store::embedded::EmbeddedStore;
    use std::net::IpAddr;

    fn held(ips: &[[u8; 4]], ports: &[i64]) -> InUse {
        InUse {
            ips: ips.iter().map(|ip| IpAddr::from(*ip)).collect(),
            node_ports: ports.iter().copied().collect(),
        }
    }

    #[tokio::test]
    async fn claims_refuse_what_is_taken_and_releases_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let net = NetworkConfig::default();
        let ranges = ServiceRanges::new(&store, &net);
        let a = held(&[[10, 96, 0, 5]], &[30001]);
        assert!(ranges.claim(&a).await.unwrap());
        assert_eq!(ranges.snapshot().await.unwrap().ips, a.ips);
        // The port is taken: nothing of b is recorded, its free address included.
        let b = held(&[[10, 96, 0, 6]], &[30001]);
        assert!(!ranges.claim(&b).await.unwrap());
        let snap = ranges.snapshot().await.unwrap();
        assert_eq!(
            (snap.ips, snap.node_ports),
            (a.ips.clone(), a.node_ports.clone())
        );
        ranges.release(&a).await;
        assert!(ranges.claim(&b).await.unwrap());
        let snap = ranges.snapshot().await.unwrap();
        assert_eq!((snap.ips, snap.node_ports), (b.ips, b.node_ports));
    }

    #[tokio::test]
    async fn repair_records_services_and_frees_a_leak_seen_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let net = NetworkConfig::default();
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.7",
            "ports": [{"port": 80, "nodePort": 30007}]}});
        store
            .create(
                "/registry/services/specs/default/s",
                svc.to_string().into_bytes(),
            )
            .await
            .unwrap();
        let ranges = ServiceRanges::new(&store, &net);
        let leak = held(&[[10, 96, 0, 9]], &[30009]);
        assert!(ranges.claim(&leak).await.unwrap());
        let mut repair = Repair::default();
        repair.pass(&store, &net).await.unwrap();
        // The Service's allocations are recorded; the leak is only suspected.
        let snap = ranges.snapshot().await.unwrap();
        assert_eq!(snap.ips.len(), 2);
        assert!(snap.node_ports.contains(&30007) && snap.node_ports.contains(&30009));
        repair.pass(&store, &net).await.unwrap();
        let snap = ranges.snapshot().await.unwrap();
        assert_eq!(
            (snap.ips, snap.node_ports),
            (
                held(&[[10, 96, 0, 7]], &[]).ips,
                held(&[], &[30007]).node_ports
            )
        );
    }

    #[tokio::test]
    async fn a_dual_stack_cluster_keeps_the_other_family_in_a_second_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let net = NetworkConfig::default()
            .with_service_cidr("10.96.0.0/16,fd00:10:96::/108")
            .unwrap();
        let ranges = ServiceRanges::new(&store, &net);
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut a = held(&[[10, 96, 0, 5]], &[]);
        a.ips.insert(v6("fd00:10:96::5"));
        assert!(ranges.claim(&a).await.unwrap());
        assert_eq!(ranges.snapshot().await.unwrap().ips, a.ips);
        let kv = store.get(SECONDARY_SERVICE_IPS_KEY).await.unwrap().unwrap();
        let obj: Value = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(obj["range"], "fd00:10:96::/108");
        // The IPv6 address is taken: nothing of b is recorded, its free IPv4 one included.
        let mut b = held(&[[10, 96, 0, 6]], &[]);
        b.ips.insert(v6("fd00:10:96::5"));
        assert!(!ranges.claim(&b).await.unwrap());
        assert_eq!(ranges.snapshot().await.unwrap().ips, a.ips);
        // The repair pass frees a leak of either family seen twice.
        let mut repair = Repair::default();
        repair.pass(&store, &net).await.unwrap();
        assert_eq!(ranges.snapshot().await.unwrap().ips, a.ips);
        repair.pass(&store, &net).await.unwrap();
        assert!(ranges.snapshot().await.unwrap().ips.is_empty());
        // A server started with another secondary range refuses the stored bitmap.
        let other = NetworkConfig::default()
            .with_service_cidr("10.96.0.0/16,fd00:10:97::/108")
            .unwrap();
        let err = ServiceRanges::new(&store, &other)
            .snapshot()
            .await
            .unwrap_err();
        assert!(
            err.message
                .contains("every server must be started with the same ranges")
        );
    }
}
