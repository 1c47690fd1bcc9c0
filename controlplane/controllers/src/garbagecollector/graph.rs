//! The collector's ownership graph, keyed by uid: every object its watches have shown, with
//! its owner references and the uids of its dependents. An owner named by a reference but not
//! yet seen is a *virtual* node until a watch shows it or a lookup finds it absent. Each change
//! says which nodes the collector must look at next ([`Work`]).

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use skiff_k8s::finalizers::{FOREGROUND as FOREGROUND_FINALIZER, ORPHAN as ORPHAN_FINALIZER};

/// Names one object for the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    /// For a virtual node: the namespace of the dependent that named it (used only if its
    /// kind is namespaced).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

impl Identity {
    fn of_owner(r: &OwnerReference, namespace: Option<String>) -> Self {
        Identity {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace,
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// What the collector must look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// Whether the object must go (its owners are gone or deleting it in the foreground), or,
    /// when it is itself deleting in the foreground, whether its dependents are gone.
    AttemptToDelete(String),
    /// Orphan the dependents of an owner deleted with the `orphan` finalizer.
    AttemptToOrphan(String),
}

/// The deletion state a watch shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Deletion {
    deleting: bool,
    orphan: bool,
    foreground: bool,
}

pub fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// Deleting in the foreground: waiting for the dependents that block it.
pub fn deleting_dependents(meta: &ObjectMeta) -> bool {
    Deletion::of(meta).deleting_dependents()
}

impl Deletion {
    fn of(meta: &ObjectMeta) -> Self {
        Deletion {
            deleting: meta.deletion_timestamp.is_some(),
            orphan: has_finalizer(meta, ORPHAN_FINALIZER),
            foreground: has_finalizer(meta, FOREGROUND_FINALIZER),
        }
    }

    fn orphaning(self) -> bool {
        self.deleting && self.orphan
    }

    fn deleting_dependents(self) -> bool {
        self.deleting && self.foreground
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub dependents: BTreeSet<String>,
    /// Seen through a watch; false for a virtual node.
    pub observed: bool,
    deletion: Deletion,
}

impl Node {
    pub fn being_deleted(&self) -> bool {
        self.deletion.deleting
    }

    /// Deleting in the foreground: waits for the dependents that block it.
    pub fn deleting_dependents(&self) -> bool {
        self.deletion.deleting_dependents()
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
}

/// Whether the reference blocks its owner's foreground deletion.
fn blocks(r: &OwnerReference) -> bool {
    r.block_owner_deletion == Some(true)
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// An object a watch showed (added, changed or listed).
    pub fn observe(&mut self, identity: Identity, meta: &ObjectMeta) -> Vec<Work> {
        let uid = identity.uid.clone();
        let owners = meta.owner_references.clone().unwrap_or_default();
        let now = Deletion::of(meta);
        let mut work = Vec::new();
        let (before, old_owners) = match self.nodes.get_mut(&uid) {
            None => {
                self.nodes.insert(
                    uid.clone(),
                    Node {
                        identity: identity.clone(),
                        owners: Vec::new(),
                        dependents: BTreeSet::new(),
                        observed: true,
                        deletion: now,
                    },
                );
                (None, Vec::new())
            }
            Some(node) => {
                let before = node.observed.then_some(node.deletion);
                node.identity = identity.clone();
                node.observed = true;
                node.deletion = now;
                (before, std::mem::take(&mut node.owners))
            }
        };
        // Owners whose blocking reference went away may now finish their foreground deletion.
        for old in &old_owners {
            let still_blocking = owners.iter().any(|o| o.uid == old.uid && blocks(o));
            if blocks(old) && !still_blocking && self.deleting_dependents(&old.uid) {
                work.push(Work::AttemptToDelete(old.uid.clone()));
            }
        }
        for old in old_owners
            .iter()
            .filter(|o| !owners.iter().any(|n| n.uid == o.uid))
        {
            if let Some(owner) = self.nodes.get_mut(&old.uid) {
                owner.dependents.remove(&uid);
            }
        }
        for new in owners
            .iter()
            .filter(|n| !old_owners.iter().any(|o| o.uid == n.uid))
        {
            match self.nodes.get_mut(&new.uid) {
                Some(owner) => {
                    owner.dependents.insert(uid.clone());
                }
                None => {
                    // Not seen yet: it may exist (its watch lags) or be gone; a lookup decides.
                    let owner = Identity::of_owner(new, identity.namespace.clone());
                    self.nodes.insert(
                        new.uid.clone(),
                        Node {
                            identity: owner,
                            owners: Vec::new(),
                            dependents: BTreeSet::from([uid.clone()]),
                            observed: false,
                            deletion: Deletion::default(),
                        },
                    );
                    work.push(Work::AttemptToDelete(new.uid.clone()));
                }
            }
        }
        if let Some(node) = self.nodes.get_mut(&uid) {
            node.owners = owners;
        }
        let was = before.unwrap_or_default();
        if now.orphaning() && !was.orphaning() {
            work.push(Work::AttemptToOrphan(uid));
        } else if now.deleting_dependents() && !was.deleting_dependents() {
            work.extend(self.dependents(&uid).map(Work::AttemptToDelete));
            work.push(Work::AttemptToDelete(uid));
        }
        work
    }

    /// The object `uid` is gone (its watch said so, or a lookup found nothing): its
    /// dependents may have lost their last owner, and owners deleting in the foreground may
    /// have lost their last blocking dependent.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut work: Vec<Work> = node
            .dependents
            .iter()
            .cloned()
            .map(Work::AttemptToDelete)
            .collect();
        for o in &node.owners {
            if let Some(owner) = self.nodes.get_mut(&o.uid) {
                owner.dependents.remove(uid);
                if owner.deleting_dependents() {
                    work.push(Work::AttemptToDelete(o.uid.clone()));
                }
            }
        }
        work
    }

    /// A lookup of the node `uid` by its identity found nothing (or another object): a virtual
    /// node goes; an observed one stays until its watch says it is gone, but its dependents
    /// look at their references again.
    pub fn absent(&mut self, uid: &str) -> Vec<Work> {
        match self.nodes.get(uid) {
            Some(n) if !n.observed => self.remove(uid),
            Some(n) => n
                .dependents
                .iter()
                .cloned()
                .map(Work::AttemptToDelete)
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn dependents(&self, uid: &str) -> impl Iterator<Item = String> + '_ {
        self.nodes
            .get(uid)
            .into_iter()
            .flat_map(|n| n.dependents.iter().cloned())
    }

    /// The dependents whose reference to `uid` blocks its foreground deletion.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        self.dependents(uid)
            .filter_map(|d| self.nodes.get(&d))
            .filter(|d| d.owners.iter().any(|o| o.uid == uid && blocks(o)))
            .collect()
    }

    fn deleting_dependents(&self, uid: &str) -> bool {
        self.nodes.get(uid).is_some_and(Node::deleting_dependents)
    }

    /// The observed nodes of one resource (apiVersion and kind as its watch names them).
    pub fn observed_of(&self, api_version: &str, kind: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| {
                n.observed && n.identity.api_version == api_version && n.identity.kind == kind
            })
            .map(|n| n.identity.uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(kind: &str, name: &str, uid: &str) -> Identity {
        Identity {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("default".into()),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn meta(owners: &[(&str, bool)], deleting: bool, finalizers: &[&str]) -> ObjectMeta {
        let refs: Vec<_> = owners
            .iter()
            .map(|(uid, block)| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid, "blockOwnerDeletion": block}))
            .collect();
        serde_json::from_value(json!({
            "ownerReferences": refs,
            "finalizers": finalizers,
            "deletionTimestamp": if deleting { Some("2026-01-01T00:00:00Z") } else { None },
        }))
        .unwrap()
    }

    fn delete(uid: &str) -> Work {
        Work::AttemptToDelete(uid.into())
    }

    #[test]
    fn an_owner_seen_after_its_dependent_turns_from_virtual_to_observed() {
        let mut g = Graph::default();
        // The dependent first: its owner becomes a virtual node to look up.
        assert_eq!(
            g.observe(id("Pod", "p", "p"), &meta(&[("o", true)], false, &[])),
            [delete("o")]
        );
        assert!(!g.get("o").unwrap().observed);
        assert!(
            g.observe(id("ConfigMap", "o", "o"), &meta(&[], false, &[]))
                .is_empty()
        );
        let o = g.get("o").unwrap();
        assert!(o.observed && o.dependents.contains("p"));
        assert_eq!(g.observed_of("v1", "ConfigMap"), ["o"]);
    }

    #[test]
    fn a_gone_owner_sends_its_dependents_to_be_looked_at() {
        let mut g = Graph::default();
        g.observe(id("ConfigMap", "o", "o"), &meta(&[], false, &[]));
        g.observe(id("Pod", "a", "a"), &meta(&[("o", true)], false, &[]));
        g.observe(id("Pod", "b", "b"), &meta(&[("o", false)], false, &[]));
        assert_eq!(g.remove("o"), [delete("a"), delete("b")]);
        // A lookup that finds an observed object missing leaves it to its watch.
        g.observe(id("ConfigMap", "o2", "o2"), &meta(&[], false, &[]));
        g.observe(id("Pod", "c", "c"), &meta(&[("o2", false)], false, &[]));
        assert_eq!(g.absent("o2"), [delete("c")]);
        assert!(g.get("o2").is_some());
        // A virtual node found absent goes.
        g.observe(id("Pod", "d", "d"), &meta(&[("ghost", false)], false, &[]));
        assert_eq!(g.absent("ghost"), [delete("d")]);
        assert!(g.get("ghost").is_none());
    }

    #[test]
    fn foreground_deletion_waits_for_blocking_dependents() {
        let mut g = Graph::default();
        g.observe(id("ConfigMap", "o", "o"), &meta(&[], false, &[]));
        g.observe(id("Pod", "a", "a"), &meta(&[("o", true)], false, &[]));
        g.observe(id("Pod", "b", "b"), &meta(&[("o", false)], false, &[]));
        let work = g.observe(
            id("ConfigMap", "o", "o"),
            &meta(&[], true, &["foregroundDeletion"]),
        );
        assert_eq!(work, [delete("a"), delete("b"), delete("o")]);
        // The same state again is no transition.
        assert!(
            g.observe(
                id("ConfigMap", "o", "o"),
                &meta(&[], true, &["foregroundDeletion"])
            )
            .is_empty()
        );
        let blocking: Vec<_> = g
            .blocking_dependents("o")
            .iter()
            .map(|n| n.identity.uid.clone())
            .collect();
        assert_eq!(blocking, ["a"]);
        // Dropping the blocking reference, or the dependent going, looks at the owner again.
        assert_eq!(
            g.observe(id("Pod", "a", "a"), &meta(&[("o", false)], false, &[])),
            [delete("o")]
        );
        assert!(g.blocking_dependents("o").is_empty());
        assert_eq!(g.remove("b"), [delete("o")]);
    }

    #[test]
    fn an_orphaning_owner_is_orphaned_once() {
        let mut g = Graph::default();
        g.observe(id("ConfigMap", "o", "o"), &meta(&[], false, &[]));
        g.observe(id("Pod", "a", "a"), &meta(&[("o", true)], false, &[]));
        let m = meta(&[], true, &["orphan"]);
        assert_eq!(
            g.observe(id("ConfigMap", "o", "o"), &m),
            [Work::AttemptToOrphan("o".into())]
        );
        assert!(g.observe(id("ConfigMap", "o", "o"), &m).is_empty());
        // Dropping the reference detaches the dependent.
        g.observe(id("Pod", "a", "a"), &meta(&[], false, &[]));
        assert_eq!(g.dependents("o").count(), 0);
    }

    #[test]
    fn a_listed_object_already_deleting_is_acted_on() {
        // After a restart, the first list shows owners mid-deletion.
        let mut g = Graph::default();
        assert_eq!(
            g.observe(id("ConfigMap", "o", "o"), &meta(&[], true, &["orphan"])),
            [Work::AttemptToOrphan("o".into())]
        );
        assert_eq!(
            g.observe(
                id("ConfigMap", "f", "f"),
                &meta(&[], true, &["foregroundDeletion"])
            ),
            [delete("f")]
        );
    }
}
