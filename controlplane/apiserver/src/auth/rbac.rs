//! The RBAC authorizer, as kube-apiserver's: a request is allowed when a ClusterRoleBinding, or
//! a RoleBinding in the request's namespace, names the user (or one of its groups, or its
//! service account) and refers to a role with a rule matching the request. The four kinds are
//! read into memory ([`Policy`]) and kept current by watching the store, so a decision costs no
//! store read. ClusterRoles with an `aggregationRule` are the union of the ClusterRoles their
//! selectors match, computed here and written back into the stored object (the job of
//! kube-controller-manager's clusterrole-aggregation controller). Escalation prevention
//! (`covers`) is here too: nobody grants a rule they do not hold.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::attributes::{Attributes, ResourceAttributes};
use super::{MASTERS, UserInfo};
use crate::ApiServer;
use crate::object::{decode_kv, encode_for, meta_str};
use crate::resources::{self, ResourceInfo};
use crate::selectors::LabelSelector;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// One `rbac.authorization.k8s.io/v1` PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
    pub verbs: Vec<String>,
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

fn has_or_star(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == "*" || x == s)
}

/// `/apis/*` covers `/apis/apps`; `*` covers everything.
fn url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == "*"
        || rule_url == path
        || rule_url
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

impl Rule {
    /// Whether the rule allows the request (RBAC's `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        match a {
            Attributes::Resource(r) => self.allows_resource(r),
            Attributes::NonResource { verb, path } => {
                has_or_star(&self.verbs, verb)
                    && self.non_resource_urls.iter().any(|u| url_matches(u, path))
            }
        }
    }

    fn allows_resource(&self, r: &ResourceAttributes) -> bool {
        if !has_or_star(&self.verbs, &r.verb) || !has_or_star(&self.api_groups, &r.group) {
            return false;
        }
        let combined = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        let resource_matches = self.resources.iter().any(|rr| {
            rr == "*"
                || *rr == combined
                || (!r.subresource.is_empty()
                    && rr.strip_prefix("*/") == Some(r.subresource.as_str()))
        });
        resource_matches && (self.resource_names.is_empty() || has(&self.resource_names, &r.name))
    }

    /// Whether this rule covers all of `sub` (RBAC's `ruleCovers`).
    fn covers(&self, sub: &Rule) -> bool {
        let all = |owner: &[String], wanted: &[String]| {
            has(owner, "*") || wanted.iter().all(|w| has(owner, w))
        };
        let resources = has(&self.resources, "*")
            || sub.resources.iter().all(|path| {
                has(&self.resources, path)
                    || path
                        .split_once('/')
                        .is_some_and(|(_, s)| has(&self.resources, &format!("*/{s}")))
            });
        let urls = sub.non_resource_urls.iter().all(|u| {
            self.non_resource_urls
                .iter()
                .any(|o| o == u || url_matches(o, u))
        });
        let names = if sub.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty()
                || sub
                    .resource_names
                    .iter()
                    .all(|n| has(&self.resource_names, n))
        };
        all(&self.verbs, &sub.verbs)
            && all(&self.api_groups, &sub.api_groups)
            && resources
            && urls
            && names
    }

    /// The rule as single-verb, single-resource (and single-name) rules (RBAC's `BreakdownRule`).
    fn breakdown(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for g in &self.api_groups {
            for res in &self.resources {
                for v in &self.verbs {
                    let one = Rule {
                        api_groups: vec![g.clone()],
                        resources: vec![res.clone()],
                        verbs: vec![v.clone()],
                        ..Default::default()
                    };
                    if self.resource_names.is_empty() {
                        out.push(one);
                    } else {
                        for n in &self.resource_names {
                            out.push(Rule {
                                resource_names: vec![n.clone()],
                                ..one.clone()
                            });
                        }
                    }
                }
            }
        }
        for u in &self.non_resource_urls {
            for v in &self.verbs {
                out.push(Rule {
                    non_resource_urls: vec![u.clone()],
                    verbs: vec![v.clone()],
                    ..Default::default()
                });
            }
        }
        out
    }

    /// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}`, as RBAC's
    /// `CompactString` shows a rule.
    pub fn compact_string(&self) -> String {
        let q = |v: &[String]| {
            let parts: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", parts.join(" "))
        };
        let mut parts = Vec::new();
        for (label, v) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ] {
            if !v.is_empty() {
                parts.push(format!("{label}:{}", q(v)));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// The rules of `servant` that no rule of `owner` covers, merged by everything but the verb.
pub fn uncovered(owner: &[Rule], servant: &[Rule]) -> Vec<Rule> {
    let mut missing: Vec<Rule> = Vec::new();
    for one in servant.iter().flat_map(Rule::breakdown) {
        if owner.iter().any(|o| o.covers(&one)) {
            continue;
        }
        match missing.iter_mut().find(|m| {
            m.api_groups == one.api_groups
                && m.resources == one.resources
                && m.resource_names == one.resource_names
                && m.non_resource_urls == one.non_resource_urls
        }) {
            Some(m) if !has(&m.verbs, &one.verbs[0]) => m.verbs.extend(one.verbs),
            Some(_) => {}
            None => missing.push(one),
        }
    }
    missing
}

fn rules_of(o: &Value) -> Vec<Rule> {
    serde_json::from_value(o.get("rules").cloned().unwrap_or(json!([]))).unwrap_or_default()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[derive(Default)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone)]
struct Binding {
    name: String,
    namespace: String,
    /// `ClusterRole` or `Role`.
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from(o: &Value) -> Self {
        Self {
            name: meta_str(o, "name").unwrap_or_default().to_string(),
            namespace: meta_str(o, "namespace").unwrap_or_default().to_string(),
            role_kind: o["roleRef"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            role_name: o["roleRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            subjects: serde_json::from_value(o.get("subjects").cloned().unwrap_or(json!([])))
                .unwrap_or_default(),
        }
    }
}

/// Bindings with an index from the user names and groups their subjects name, so that a
/// decision looks only at the bindings naming the request's user, however many others exist.
#[derive(Debug, Default)]
struct BindingSet {
    bindings: Vec<Binding>,
    /// (binding, subject) positions by the user a subject names; a service account by its user
    /// name `system:serviceaccount:NS:NAME` (NS defaulting to the binding's namespace), as RBAC's
    /// `appliesToUser` matches it.
    by_user: HashMap<String, Vec<(usize, usize)>>,
    by_group: HashMap<String, Vec<(usize, usize)>>,
}

impl BindingSet {
    fn push(&mut self, b: Binding) {
        let i = self.bindings.len();
        for (j, s) in b.subjects.iter().enumerate() {
            let (index, key) = match s.kind.as_str() {
                "User" => (&mut self.by_user, s.name.clone()),
                "Group" => (&mut self.by_group, s.name.clone()),
                "ServiceAccount" => {
                    let ns = if s.namespace.is_empty() {
                        &b.namespace
                    } else {
                        &s.namespace
                    };
                    (
                        &mut self.by_user,
                        format!("system:serviceaccount:{ns}:{}", s.name),
                    )
                }
                _ => continue,
            };
            index.entry(key).or_default().push((i, j));
        }
        self.bindings.push(b);
    }

    /// The bindings naming `user` (or one of its groups), in order, each with the first subject
    /// that names it.
    fn for_user<'a>(&'a self, user: &UserInfo) -> Vec<(&'a Binding, &'a Subject)> {
        let mut hits: Vec<(usize, usize)> = self
            .by_user
            .get(&user.name)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for g in &user.groups {
            hits.extend(self.by_group.get(g).into_iter().flatten().copied());
        }
        hits.sort_unstable();
        hits.dedup_by_key(|(i, _)| *i);
        hits.into_iter()
            .map(|(i, j)| (&self.bindings[i], &self.bindings[i].subjects[j]))
            .collect()
    }
}

/// The RBAC objects, as read from the store.
#[derive(Debug, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Vec<Rule>>,
    /// Effective rules (aggregated ones resolved).
    cluster_roles: HashMap<String, Vec<Rule>>,
    role_bindings: HashMap<String, BindingSet>,
    cluster_role_bindings: BindingSet,
}

/// The effective rules of every ClusterRole: aggregated ones are the union of the roles their
/// selectors match (which may be aggregated themselves: `admin` takes in `edit`, which takes
/// in `view`).
fn aggregate(objects: &[Value]) -> HashMap<String, Vec<Rule>> {
    let by_name: HashMap<&str, &Value> = objects
        .iter()
        .map(|o| (meta_str(o, "name").unwrap_or_default(), o))
        .collect();
    fn resolve(
        name: &str,
        by_name: &HashMap<&str, &Value>,
        visiting: &mut BTreeSet<String>,
    ) -> Vec<Rule> {
        let Some(o) = by_name.get(name) else {
            return Vec::new();
        };
        let Some(selectors) = o
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
        else {
            return rules_of(o);
        };
        if !visiting.insert(name.to_string()) {
            return Vec::new();
        }
        let selectors: Vec<LabelSelector> = selectors
            .iter()
            .filter_map(LabelSelector::from_label_selector)
            .collect();
        let mut sources: Vec<&str> = by_name
            .iter()
            .filter(|(n, other)| {
                **n != name
                    && selectors.iter().any(|s| {
                        s.matches(other.pointer("/metadata/labels").and_then(Value::as_object))
                    })
            })
            .map(|(n, _)| *n)
            .collect();
        sources.sort();
        let mut rules: Vec<Rule> = Vec::new();
        for s in sources {
            for r in resolve(s, by_name, visiting) {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        visiting.remove(name);
        rules
    }
    by_name
        .keys()
        .map(|n| (n.to_string(), resolve(n, &by_name, &mut BTreeSet::new())))
        .collect()
}

/// Why a request was allowed or not, with the reason kube-apiserver's RBAC gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Policy {
    fn build(
        roles: &[Value],
        cluster_roles: &[Value],
        role_bindings: &[Value],
        cluster_role_bindings: &[Value],
    ) -> Self {
        let mut p = Policy {
            cluster_roles: aggregate(cluster_roles),
            ..Default::default()
        };
        for b in cluster_role_bindings {
            p.cluster_role_bindings.push(Binding::from(b));
        }
        for r in roles {
            let key = (
                meta_str(r, "namespace").unwrap_or_default().to_string(),
                meta_str(r, "name").unwrap_or_default().to_string(),
            );
            p.roles.insert(key, rules_of(r));
        }
        for b in role_bindings {
            let b = Binding::from(b);
            p.role_bindings
                .entry(b.namespace.clone())
                .or_default()
                .push(b);
        }
        p
    }

    fn role_rules(&self, b: &Binding) -> &[Rule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            _ => None,
        };
        rules.map_or(&[], Vec::as_slice)
    }

    /// The bindings that apply to `user` in `namespace` ("" for cluster-wide only).
    fn applicable<'a>(
        &'a self,
        user: &UserInfo,
        namespace: &str,
    ) -> Vec<(&'a Binding, &'a Subject)> {
        let mut out = self.cluster_role_bindings.for_user(user);
        if let Some(set) = self
            .role_bindings
            .get(namespace)
            .filter(|_| !namespace.is_empty())
        {
            out.extend(set.for_user(user));
        }
        out
    }

    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        let namespace = match a {
            Attributes::Resource(r) => r.namespace.as_str(),
            Attributes::NonResource { .. } => "",
        };
        for (b, s) in self.applicable(user, namespace) {
            if self.role_rules(b).iter().any(|r| r.allows(a)) {
                let binding = if b.namespace.is_empty() {
                    format!("ClusterRoleBinding {:?}", b.name)
                } else {
                    format!("RoleBinding \"{}/{}\"", b.namespace, b.name)
                };
                let subject = if s.kind == "ServiceAccount" {
                    let ns = if s.namespace.is_empty() {
                        &b.namespace
                    } else {
                        &s.namespace
                    };
                    format!("ServiceAccount \"{ns}/{}\"", s.name)
                } else {
                    format!("{} {:?}", s.kind, s.name)
                };
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by {binding} of {} {:?} to {subject}",
                        b.role_kind, b.role_name
                    ),
                };
            }
        }
        Decision {
            allowed: false,
            reason: String::new(),
        }
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        if user.in_group(MASTERS) {
            return vec![
                Rule {
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    verbs: vec!["*".into()],
                    ..Default::default()
                },
                Rule {
                    non_resource_urls: vec!["*".into()],
                    verbs: vec!["*".into()],
                    ..Default::default()
                },
            ];
        }
        let mut out: Vec<Rule> = Vec::new();
        for (b, _) in self.applicable(user, namespace) {
            for r in self.role_rules(b) {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// The rules a RoleBinding or ClusterRoleBinding in `namespace` grants by its roleRef;
    /// `None` when the role does not exist.
    pub fn referenced_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<Rule>> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).cloned(),
            "Role" => self
                .roles
                .get(&(namespace.to_string(), name.to_string()))
                .cloned(),
            _ => None,
        }
    }
}

/// The policy in memory and the signal that it must be read again.
#[derive(Default)]
pub struct Rbac {
    policy: std::sync::RwLock<Arc<Policy>>,
    changed: Notify,
}

const KINDS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

fn resource(plural: &str) -> &'static ResourceInfo {
    resources::find(GROUP, "v1", plural).expect("RBAC resources are served")
}

impl Rbac {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("not poisoned").clone()
    }

    /// Reads the four kinds from the store and replaces the policy; writes the aggregated rules
    /// of ClusterRoles whose stored rules differ.
    async fn reload(app: &ApiServer) -> Result<(), crate::status::ApiError> {
        let mut lists: Vec<Vec<Value>> = Vec::new();
        for plural in KINDS {
            let res = app
                .store
                .range(&resource(plural).prefix(None), None, 0)
                .await?;
            lists.push(res.kvs.iter().map(decode_kv).collect::<Result<_, _>>()?);
        }
        let policy = Policy::build(&lists[0], &lists[1], &lists[2], &lists[3]);
        let cr = resource("clusterroles");
        for o in lists[1]
            .iter()
            .filter(|o| o.get("aggregationRule").is_some_and(|a| !a.is_null()))
        {
            let name = meta_str(o, "name").unwrap_or_default();
            let want = policy.cluster_roles.get(name).cloned().unwrap_or_default();
            if rules_of(o) != want {
                let mut new = o.clone();
                new["rules"] = json!(want);
                let rev: u64 = meta_str(o, "resourceVersion")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                // A conflict means another write came in; its event reloads again.
                if let Err(e) = app
                    .store
                    .update(&cr.key(None, name), encode_for(cr, &new), rev)
                    .await
                {
                    tracing::debug!(role = name, error = %e, "aggregating a ClusterRole");
                }
            }
        }
        *app.rbac.policy.write().expect("not poisoned") = Arc::new(policy);
        Ok(())
    }

    /// Loads the policy, then keeps it current: every change to the four kinds reloads it.
    pub async fn start(app: Arc<ApiServer>) -> Result<(), crate::status::ApiError> {
        let from = app.store.current_revision().await?;
        Self::reload(&app).await?;
        for plural in KINDS {
            let app = app.clone();
            tokio::spawn(async move {
                let prefix = resource(plural).prefix(None);
                let mut after = from;
                loop {
                    match app.store.watch(&prefix, after).await {
                        Ok(mut events) => {
                            while let Some(ev) = events.next().await {
                                match ev {
                                    Ok(ev) => {
                                        after = ev.revision();
                                        app.rbac.changed.notify_one();
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "RBAC watch ended");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "RBAC watch"),
                    }
                    // History may be gone: start from now and read everything again.
                    if let Ok(rev) = app.store.current_revision().await {
                        after = rev;
                    }
                    app.rbac.changed.notify_one();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        tokio::spawn(async move {
            loop {
                app.rbac.changed.notified().await;
                if let Err(e) = Self::reload(&app).await {
                    tracing::warn!(error = %e.message, "reading the RBAC policy");
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Rule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Rule {
            api_groups: v(groups),
            resources: v(resources),
            verbs: v(verbs),
            ..Default::default()
        }
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, ns: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            ..Default::default()
        })
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let r = rule(&[""], &["pods", "*/status"], &["get", "list"]);
        assert!(r.allows(&req("list", "", "pods", "", "d")));
        assert!(!r.allows(&req("delete", "", "pods", "", "d")));
        assert!(!r.allows(&req("get", "", "pods", "log", "d")));
        assert!(r.allows(&req("get", "", "nodes", "status", "")));
        assert!(!r.allows(&req("get", "apps", "pods", "", "d")));
        let mut named = rule(&["*"], &["configmaps"], &["*"]);
        named.resource_names = vec!["c".into()];
        let mut a = req("get", "", "configmaps", "", "d");
        assert!(!named.allows(&a));
        if let Attributes::Resource(r) = &mut a {
            r.name = "c".into();
        }
        assert!(named.allows(&a));
        let urls = Rule {
            non_resource_urls: vec!["/apis/*".into(), "/healthz".into()],
            verbs: vec!["get".into()],
            ..Default::default()
        };
        let path = |p: &str| Attributes::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(urls.allows(&path("/apis/apps/v1")));
        assert!(urls.allows(&path("/healthz")));
        assert!(!urls.allows(&path("/metrics")));
    }

    #[test]
    fn coverage_finds_what_is_not_held() {
        let owner = vec![rule(&[""], &["pods", "pods/log"], &["get", "list"])];
        assert!(uncovered(&owner, &[rule(&[""], &["pods"], &["get"])]).is_empty());
        let missing = uncovered(
            &owner,
            &[rule(&[""], &["pods", "secrets"], &["get", "delete"])],
        );
        let shown: Vec<String> = missing.iter().map(Rule::compact_string).collect();
        assert_eq!(
            shown,
            vec![
                "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"delete\"]}",
            ]
        );
        let star = vec![rule(&["*"], &["*"], &["*"])];
        assert!(
            uncovered(
                &star,
                &[rule(&["apps"], &["deployments/scale"], &["patch"])]
            )
            .is_empty()
        );
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::authenticated(name, groups.iter().map(|g| g.to_string()).collect())
    }

    #[test]
    fn bindings_and_aggregation_decide() {
        let view = json!({"metadata": {"name": "view", "labels": {"agg-edit": "true"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg-view": "true"}}]}});
        let view_rules = json!({"metadata": {"name": "view-rules", "labels": {"agg-view": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        let edit = json!({"metadata": {"name": "edit"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg-edit": "true"}}]}});
        let role = json!({"metadata": {"name": "deleter", "namespace": "d"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]});
        let crb = json!({"metadata": {"name": "alice-edit"}, "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let rb = json!({"metadata": {"name": "sa-deleter", "namespace": "d"}, "roleRef": {"kind": "Role", "name": "deleter"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot"}, {"kind": "Group", "name": "ops"}]});
        let p = Policy::build(&[role], &[view, view_rules, edit], &[rb], &[crb]);
        let alice = user("alice", &[]);
        let d = p.authorize(&alice, &req("list", "", "pods", "", "x"));
        assert!(d.allowed);
        assert_eq!(
            d.reason,
            "RBAC: allowed by ClusterRoleBinding \"alice-edit\" of ClusterRole \"edit\" to User \"alice\""
        );
        assert!(
            !p.authorize(&alice, &req("delete", "", "pods", "", "d"))
                .allowed
        );
        let bot = user("system:serviceaccount:d:bot", &[]);
        assert!(
            p.authorize(&bot, &req("delete", "", "pods", "", "d"))
                .allowed
        );
        assert!(
            !p.authorize(&bot, &req("delete", "", "pods", "", "e"))
                .allowed
        );
        assert!(
            p.authorize(&user("bob", &["ops"]), &req("delete", "", "pods", "", "d"))
                .allowed
        );
        assert!(
            p.authorize(
                &user("root", &[MASTERS]),
                &req("delete", "", "nodes", "", "")
            )
            .allowed
        );
        assert_eq!(p.rules_for(&alice, "d").len(), 1);
    }
}
