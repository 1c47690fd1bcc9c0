//! Taints and tolerations: which taints of a node a pod's tolerations leave untolerated (the
//! core/v1 `ToleratesTaint` rules), as the scheduler, the DaemonSet controller and the node
//! lifecycle controller apply them.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// Whether toleration `t` tolerates taint `taint` (the core/v1 `ToleratesTaint` rules).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The node's taints of the given effects that no toleration tolerates.
pub fn untolerated<'a>(
    node: &'a Node,
    tolerations: &'a [Toleration],
    effects: &'a [&'a str],
) -> impl Iterator<Item = &'a Taint> + 'a {
    node.spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter(move |t| effects.contains(&t.effect.as_str()))
        .filter(move |taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}
