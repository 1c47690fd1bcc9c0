//! What a request asks to do, as kube-apiserver's `RequestInfo` resolves it for the authorizer:
//! a resource request (verb, API group, resource, subresource, namespace, name) or a request
//! for a path outside the resource tree.

use std::collections::HashMap;

use axum::http::Method;

use crate::handlers::Target;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    NonResource { verb: String, path: String },
}

impl Attributes {
    /// A request for a path that names no resource: the verb is the method, lower-cased.
    pub fn non_resource(method: &Method, path: &str) -> Self {
        Attributes::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        }
    }

    /// A request for `t`.
    pub fn resource(method: &Method, t: &Target, query: &HashMap<String, String>) -> Self {
        let collection = t.name.is_none();
        let verb = match *method {
            Method::GET | Method::HEAD if collection => {
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                    "watch"
                } else {
                    "list"
                }
            }
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if collection => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        // A list or watch of one object by `metadata.name=` is a request for that name.
        let name = match (&t.name, verb) {
            (Some(n), _) => n.clone(),
            (None, "list" | "watch") => query
                .get("fieldSelector")
                .and_then(|s| single_name(s))
                .unwrap_or_default(),
            _ => String::new(),
        };
        // A namespace is in itself: `get namespaces/foo` is authorized in namespace foo.
        let namespace = match (&t.namespace, t.res.plural) {
            (Some(ns), _) => ns.clone(),
            (None, "namespaces") => t.name.clone().unwrap_or_default(),
            _ => String::new(),
        };
        Attributes::Resource(ResourceAttributes {
            verb: verb.to_string(),
            group: t.res.group.to_string(),
            version: t.res.version.to_string(),
            resource: t.res.plural.to_string(),
            subresource: t.sub.clone().unwrap_or_default(),
            namespace,
            name,
        })
    }

    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.verb,
            Attributes::NonResource { verb, .. } => verb,
        }
    }
}

/// `metadata.name=x` (or `==`) as the only requirement of a field selector.
fn single_name(selector: &str) -> Option<String> {
    if selector.contains(',') {
        return None;
    }
    let (k, v) = selector
        .split_once("==")
        .or_else(|| selector.split_once('='))?;
    (k.trim() == "metadata.name" && !v.contains('!')).then(|| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::parse_target;

    fn attrs(method: Method, path: &str, query: &[(&str, &str)]) -> ResourceAttributes {
        let t = parse_target(path).unwrap().unwrap();
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Attributes::resource(&method, &t, &q) {
            Attributes::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verbs_follow_method_and_shape() {
        let r = attrs(Method::GET, "/api/v1/namespaces/d/pods", &[]);
        assert_eq!((r.verb.as_str(), r.namespace.as_str()), ("list", "d"));
        let r = attrs(Method::GET, "/api/v1/pods", &[("watch", "true")]);
        assert_eq!((r.verb.as_str(), r.namespace.as_str()), ("watch", ""));
        let r = attrs(Method::DELETE, "/api/v1/namespaces/d/pods", &[]);
        assert_eq!(r.verb, "deletecollection");
        let r = attrs(
            Method::PATCH,
            "/apis/apps/v1/namespaces/d/deployments/w/scale",
            &[],
        );
        assert_eq!(
            (
                r.verb.as_str(),
                r.group.as_str(),
                r.subresource.as_str(),
                r.name.as_str()
            ),
            ("patch", "apps", "scale", "w")
        );
    }

    #[test]
    fn a_namespace_is_in_itself_and_name_selectors_name() {
        let r = attrs(Method::GET, "/api/v1/namespaces/foo", &[]);
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("foo", "foo"));
        let r = attrs(
            Method::GET,
            "/api/v1/namespaces/d/configmaps",
            &[("fieldSelector", "metadata.name=c")],
        );
        assert_eq!(r.name, "c");
        let r = attrs(
            Method::GET,
            "/api/v1/namespaces/d/configmaps",
            &[("fieldSelector", "metadata.name!=c")],
        );
        assert_eq!(r.name, "");
    }
}
