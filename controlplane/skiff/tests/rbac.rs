//! Who may do what, driven by kubectl 1.32 acting as several users: client certificates issued
//! by `skiff kubeconfig`, RBAC with the bootstrap roles, escalation prevention, the review APIs
//! (`auth whoami`, `auth can-i`, `--list`), service-account tokens and anonymous requests.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Server, path_str};

/// kubectl with the credentials in `kubeconfig`.
fn as_user(s: &Server, kubeconfig: &Path, args: &[&str]) -> Output {
    let mut full = vec!["--kubeconfig", path_str(kubeconfig)];
    full.extend_from_slice(args);
    s.kubectl_output(&full)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Retries `f` until it holds: the authorizer reads bindings from a watch, a moment after
/// they are written.
fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn can_i(s: &Server, kc: &Path, args: &[&str]) -> String {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    stdout(&as_user(s, kc, &full)).trim().to_string()
}

#[test]
fn a_view_user_lists_but_cannot_delete_and_an_edit_binding_widens_it() {
    let s = Server::start();
    let alice = s.user_kubeconfig("alice", &["dev", "ops"]);
    let who = stdout(&as_user(&s, &alice, &["auth", "whoami"]));
    assert!(who.contains("alice"), "{who}");
    assert!(
        who.contains("[dev ops system:authenticated]"),
        "whoami: {who}"
    );
    // The admin kubeconfig keeps working, as a member of system:masters.
    let admin = s.kubectl(&["auth", "whoami"]);
    assert!(admin.contains("system:masters"), "{admin}");

    // No binding yet: discovery and the self reviews only.
    let out = as_user(&s, &alice, &["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(can_i(&s, &alice, &["list", "pods"]), "no");

    s.kubectl(&["run", "web", "--image=busybox"]);
    s.kubectl(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    eventually("alice may list pods", || {
        let out = as_user(&s, &alice, &["get", "pods", "-o", "name"]);
        if out.status.success() && stdout(&out).contains("pod/web") {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });
    assert_eq!(can_i(&s, &alice, &["list", "pods"]), "yes");
    assert_eq!(
        can_i(&s, &alice, &["list", "pods", "-n", "kube-system"]),
        "no"
    );
    assert_eq!(can_i(&s, &alice, &["get", "secrets"]), "no");
    let out = as_user(&s, &alice, &["delete", "pod", "web"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): pods \"web\" is forbidden: User \"alice\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // `--list` shows why: the view rules through the binding.
    let list = stdout(&as_user(&s, &alice, &["auth", "can-i", "--list"]));
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods row in:\n{list}"));
    assert!(pods.contains("[get list watch]"), "{pods}");
    assert!(list.contains("selfsubjectaccessreviews.authorization.k8s.io"));

    // A group binding to edit widens it.
    s.kubectl(&[
        "create",
        "rolebinding",
        "ops-edit",
        "--clusterrole=edit",
        "--group=ops",
    ]);
    eventually("alice may delete pods", || {
        match can_i(&s, &alice, &["delete", "pods"]).as_str() {
            "yes" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    let out = as_user(&s, &alice, &["delete", "pod", "web", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Still nothing cluster-wide.
    assert_eq!(can_i(&s, &alice, &["list", "nodes"]), "no");
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let s = Server::start();
    let bob = s.user_kubeconfig("bob", &[]);
    s.kubectl(&[
        "create",
        "rolebinding",
        "bob-admin",
        "--clusterrole=admin",
        "--user=bob",
    ]);
    eventually("bob may create roles", || {
        match can_i(&s, &bob, &["create", "roles"]).as_str() {
            "yes" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    // What admin holds in the namespace can be granted there.
    let out = as_user(
        &s,
        &bob,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_user(
        &s,
        &bob,
        &[
            "create",
            "rolebinding",
            "carol-edit",
            "--clusterrole=edit",
            "--user=carol",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Nodes are not the admin's to give, nor is cluster-admin.
    let out = as_user(
        &s,
        &bob,
        &[
            "create",
            "role",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"bob\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}"),
        "{}",
        stderr(&out)
    );
    let out = as_user(
        &s,
        &bob,
        &[
            "create",
            "rolebinding",
            "bob-root",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&out)
    );
    // The `bind` verb on a role lets one bind it without holding it.
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bind-node-reader}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], resourceNames: [node-reader]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-reader}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bob-binds-node-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bind-node-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
"#,
    );
    eventually("bob may bind node-reader", || {
        let out = as_user(
            &s,
            &bob,
            &[
                "create",
                "rolebinding",
                "carol-nodes",
                "--clusterrole=node-reader",
                "--user=carol",
            ],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });
}

#[test]
fn the_bootstrap_policy_is_served_and_reconciled() {
    let mut s = Server::start();
    let roles = s.kubectl(&["get", "clusterroles", "-o", "name"]);
    for r in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:kube-scheduler",
    ] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}\n")),
            "{r} in {roles}"
        );
    }
    // view is the aggregation of system:aggregate-to-view, edit takes in view.
    let edit = s.kubectl(&["get", "clusterrole", "edit", "-o", "json"]);
    let edit: serde_json::Value = serde_json::from_str(&edit).unwrap();
    let rules = edit["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| {
        r["resources"]
            .as_array()
            .unwrap()
            .contains(&"deployments/scale".into())
            && r["verbs"].as_array().unwrap().contains(&"get".into())
    }));
    // A bootstrap role a user broke is put back at the next start.
    s.kubectl(&[
        "patch",
        "clusterrole",
        "system:basic-user",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/rules","value":[]}]"#,
    ]);
    s.kill9();
    s.spawn();
    let basic = s.kubectl(&[
        "get",
        "clusterrole",
        "system:basic-user",
        "-o",
        "jsonpath={.rules[*].resources}",
    ]);
    assert!(basic.contains("selfsubjectaccessreviews"), "{basic}");
}

/// kubectl with nothing but `token` (no kubeconfig credentials).
fn with_token(s: &Server, token: &str, args: &[&str]) -> Output {
    let server = format!("https://127.0.0.1:{}", s.port);
    let ca = s.data_dir().join("ca.crt");
    let token = format!("--token={token}");
    let mut full = vec![
        "--kubeconfig=/dev/null",
        "--server",
        &server,
        "--certificate-authority",
        path_str(&ca),
        &token,
    ];
    full.extend_from_slice(args);
    s.kubectl_cmd(&full)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl")
}

#[test]
fn service_account_tokens_authenticate_until_their_pod_is_gone() {
    let s = Server::start();
    // Every namespace gets its default ServiceAccount and the cluster CA.
    s.kubectl(&["create", "namespace", "team"]);
    eventually(
        "default ServiceAccount and kube-root-ca.crt in team",
        || {
            let out = s.kubectl_output(&[
                "get",
                "-n",
                "team",
                "serviceaccount/default",
                "configmap/kube-root-ca.crt",
                "-o",
                "name",
            ]);
            if out.status.success() {
                Ok(())
            } else {
                Err(stderr(&out))
            }
        },
    );
    let ca = s.kubectl(&[
        "get",
        "-n",
        "team",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert_eq!(
        ca,
        std::fs::read_to_string(s.data_dir().join("ca.crt")).unwrap()
    );
    // Deleted, it is made again.
    s.kubectl(&["delete", "-n", "team", "serviceaccount", "default"]);
    eventually("default ServiceAccount again", || {
        let out = s.kubectl_output(&["get", "-n", "team", "serviceaccount", "default"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });

    s.kubectl(&["run", "-n", "team", "app", "--image=busybox"]);
    let token = s.kubectl(&[
        "create",
        "token",
        "default",
        "-n",
        "team",
        "--duration=1h",
        "--bound-object-kind=Pod",
        "--bound-object-name=app",
    ]);
    let token = token.trim();
    let who = stdout(&with_token(&s, token, &["auth", "whoami"]));
    assert!(who.contains("system:serviceaccount:team:default"), "{who}");
    assert!(who.contains("system:serviceaccounts:team"), "{who}");
    assert!(
        who.contains("authentication.kubernetes.io/pod-name"),
        "{who}"
    );
    // A service account holds nothing until it is bound.
    let out = with_token(&s, token, &["get", "pods", "-n", "team"]);
    assert!(
        stderr(&out)
            .contains("User \"system:serviceaccount:team:default\" cannot list resource \"pods\""),
        "{}",
        stderr(&out)
    );
    s.kubectl(&[
        "create",
        "rolebinding",
        "-n",
        "team",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=team:default",
    ]);
    eventually("the service account may list pods", || {
        let out = with_token(&s, token, &["get", "pods", "-n", "team", "-o", "name"]);
        if stdout(&out).contains("pod/app") {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });
    // The issuer is discoverable by service accounts.
    let oidc = stdout(&with_token(
        &s,
        token,
        &["get", "--raw", "/.well-known/openid-configuration"],
    ));
    assert!(
        oidc.contains("\"issuer\":\"https://kubernetes.default.svc.cluster.local\""),
        "{oidc}"
    );
    let jwks = stdout(&with_token(&s, token, &["get", "--raw", "/openid/v1/jwks"]));
    assert!(jwks.contains("\"kty\":\"EC\""), "{jwks}");
    // TokenReview says who the token is.
    let review = s.kubectl_stdin(
        &["create", "-o", "json", "-f", "-"],
        &format!("{{\"apiVersion\": \"authentication.k8s.io/v1\", \"kind\": \"TokenReview\", \"spec\": {{\"token\": \"{token}\"}}}}"),
    );
    let review: serde_json::Value = serde_json::from_str(&review).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:team:default"
    );
    // Once its pod is gone the token is refused.
    s.kubectl(&[
        "delete",
        "pod",
        "-n",
        "team",
        "app",
        "--grace-period=0",
        "--force",
    ]);
    let out = with_token(&s, token, &["get", "pods", "-n", "team"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    // Anonymous requests are refused as unauthenticated, the health endpoints excepted.
    let out = with_token(&s, "garbage", &["get", "--raw", "/readyz"]);
    assert!(out.status.success());
}

#[test]
fn the_servers_components_run_as_their_own_users() {
    let s = Server::start_cluster();
    let scheduler = s.data_dir().join("scheduler.kubeconfig");
    let controllers = s.data_dir().join("controller-manager.kubeconfig");
    let who = stdout(&as_user(&s, &scheduler, &["auth", "whoami"]));
    assert!(who.contains("system:kube-scheduler"), "{who}");
    assert!(!who.contains("system:masters"), "{who}");
    let who = stdout(&as_user(&s, &controllers, &["auth", "whoami"]));
    assert!(who.contains("system:kube-controller-manager"), "{who}");
    assert!(!who.contains("system:masters"), "{who}");
    // The scheduler binds pods but reads no Secrets.
    assert_eq!(
        can_i(&s, &scheduler, &["create", "pods", "--subresource=binding"]),
        "yes"
    );
    assert_eq!(can_i(&s, &scheduler, &["list", "secrets", "-A"]), "no");
    // Both lead through their Leases and the controllers make a Deployment's ReplicaSet under
    // those identities.
    eventually("both Leases held", || {
        let out = s.kubectl_output(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-scheduler",
            "kube-controller-manager",
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ]);
        let held = stdout(&out);
        if held.split_whitespace().count() == 2 {
            Ok(())
        } else {
            Err(format!("{held:?} {}", stderr(&out)))
        }
    });
    s.kubectl(&["create", "deployment", "web", "--image=busybox"]);
    eventually("the Deployment's ReplicaSet", || {
        let rs = s.kubectl(&["get", "replicasets", "-l", "app=web", "-o", "name"]);
        if rs.contains("replicaset.apps/web-") {
            Ok(())
        } else {
            Err(rs)
        }
    });
}

#[test]
fn bootstrap_tokens_authenticate_until_they_expire() {
    let s = Server::start();
    let secret = |id: &str, expiration: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {{"name": "bootstrap-token-{id}", "namespace": "kube-system"}},
            "stringData": {{"token-id": "{id}", "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true", "expiration": "{expiration}",
                "auth-extra-groups": "system:bootstrappers:skiff:default-node-token"}}}}"#
        )
    };
    s.kubectl_stdin(
        &["create", "-f", "-"],
        &secret("abcdef", "2999-01-01T00:00:00Z"),
    );
    s.kubectl_stdin(
        &["create", "-f", "-"],
        &secret("expird", "2001-01-01T00:00:00Z"),
    );
    let who = with_token(&s, "abcdef.0123456789abcdef", &["auth", "whoami"]);
    let who = stdout(&who);
    assert!(who.contains("system:bootstrap:abcdef"), "{who}");
    assert!(
        who.contains("[system:bootstrappers system:bootstrappers:skiff:default-node-token system:authenticated]"),
        "{who}"
    );
    for bad in ["abcdef.0123456789abcdee", "expird.0123456789abcdef"] {
        let out = with_token(&s, bad, &["auth", "whoami"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    }
}

#[test]
fn skiff_token_create_prints_a_working_bootstrap_token() {
    let s = Server::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["token", "create", "--ttl", "1h", "--data-dir"])
        .arg(s.data_dir())
        .output()
        .expect("running skiff token create");
    assert!(out.status.success(), "{}", stderr(&out));
    // A join token: K10<sha256 of the CA's public key info>::<bootstrap token>, the hash as
    // kubeadm's `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum` gives it.
    let join = stdout(&out).trim().to_string();
    let (hash, token) = join
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .unwrap_or_else(|| panic!("not a join token: {join}"));
    let spki_hash = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -pubkey -noout -in {}/ca.crt | openssl pkey -pubin -outform der | sha256sum",
            s.data_dir().display()
        ))
        .output()
        .expect("running openssl");
    assert_eq!(hash, stdout(&spki_hash).split_whitespace().next().unwrap());
    let who = stdout(&with_token(&s, token, &["auth", "whoami"]));
    let id = token.split('.').next().unwrap();
    assert!(who.contains(&format!("system:bootstrap:{id}")), "{who}");
}

/// A pod bound to `node` that mounts Secret `secret`.
fn bound_pod(name: &str, node: &str, secret: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
        "spec": {{"nodeName": "{node}", "containers": [{{"name": "c", "image": "busybox"}}],
            "volumes": [{{"name": "s", "secret": {{"secretName": "{secret}"}}}}]}}}}"#
    )
}

#[test]
fn a_nodes_credentials_reach_only_what_its_pods_use() {
    let s = Server::start();
    for n in ["n1", "n2"] {
        s.kubectl_stdin(
            &["create", "-f", "-"],
            &format!(r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{n}"}}}}"#),
        );
    }
    s.kubectl(&["create", "secret", "generic", "s1", "--from-literal=k=v1"]);
    s.kubectl(&["create", "secret", "generic", "s2", "--from-literal=k=v2"]);
    s.kubectl_stdin(&["create", "-f", "-"], &bound_pod("p1", "n1", "s1"));
    s.kubectl_stdin(&["create", "-f", "-"], &bound_pod("p2", "n2", "s2"));
    let n1 = s.user_kubeconfig("system:node:n1", &["system:nodes"]);

    eventually("n1 reads its pod's Secret", || {
        let out = as_user(&s, &n1, &["get", "secret", "s1", "-o", "name"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });
    let out = as_user(&s, &n1, &["get", "secret", "s2"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "Error from server (Forbidden): secrets \"s2\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
    );
    // Listing every Secret is no read of one.
    assert!(!as_user(&s, &n1, &["get", "secrets"]).status.success());

    // Its own Node, not another.
    let patch = r#"{"metadata": {"labels": {"touched": "yes"}}}"#;
    let out = as_user(&s, &n1, &["patch", "node", "n2", "-p", patch]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        ),
        "{}",
        stderr(&out)
    );
    let out = as_user(&s, &n1, &["patch", "node", "n1", "-p", patch]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Its own pods' status, only mirror pods bound to itself, no one else's pods deleted.
    let status = r#"{"status": {"phase": "Running"}}"#;
    let out = as_user(
        &s,
        &n1,
        &["patch", "pod", "p2", "--subresource=status", "-p", status],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "node \"n1\" can only update pod status for pods with spec.nodeName set to itself"
        ),
        "{}",
        stderr(&out)
    );
    let out = as_user(
        &s,
        &n1,
        &["patch", "pod", "p1", "--subresource=status", "-p", status],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}"#;
    let err = s.kubectl_err(
        &["--kubeconfig", path_str(&n1), "create", "-f", "-"],
        Some(plain),
    );
    assert!(
        err.contains("node \"n1\" can only create mirror pods"),
        "{err}"
    );
    let mirror = plain.replace(
        r#""name": "plain"}"#,
        r#""name": "static-n1", "annotations": {"kubernetes.io/config.mirror": "x"}}"#,
    );
    s.kubectl_stdin(
        &["--kubeconfig", path_str(&n1), "create", "-f", "-"],
        &mirror,
    );
    let out = as_user(&s, &n1, &["delete", "pod", "p2", "--wait=false"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node \"n1\" can only delete pods with spec.nodeName set to itself"),
        "{}",
        stderr(&out)
    );

    // The edge goes with the pod.
    s.kubectl(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    eventually("n1 refused s1 once p1 is gone", || {
        let out = as_user(&s, &n1, &["get", "secret", "s1"]);
        if stderr(&out).contains("no relationship found") {
            Ok(())
        } else {
            Err(format!("{} {}", stdout(&out), stderr(&out)))
        }
    });
}

/// A key and a PEM certificate request for `subject` made by openssl in `dir`; the request
/// base64-encoded, as `spec.request` holds it.
fn openssl_request(dir: &Path, name: &str, subject: &str) -> (std::path::PathBuf, String) {
    common::require("openssl", &["version"], "Debian package openssl");
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&req)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", stderr(&out));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap());
    (key, b64)
}

fn csr_manifest(name: &str, signer: &str, request: &str, extra: &str) -> String {
    format!(
        r#"{{"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {{"name": "{name}"}},
        "spec": {{"signerName": "{signer}", "request": "{request}",
            "usages": ["digital signature", "client auth"]{extra}}}}}"#
    )
}

/// The issued certificate of CSR `name`, written to a file, once it is there.
fn issued_certificate(s: &Server, name: &str) -> std::path::PathBuf {
    let mut b64 = String::new();
    eventually(&format!("CSR {name} issued"), || {
        b64 = s.kubectl(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
        if b64.trim().is_empty() {
            Err(s.kubectl(&["get", "csr", name, "-o", "yaml"]))
        } else {
            Ok(())
        }
    });
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64 certificate");
    let path = s.data_dir().join(format!("{name}.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

fn with_certificate(s: &Server, crt: &Path, key: &Path, args: &[&str]) -> Output {
    let server = format!("https://127.0.0.1:{}", s.port);
    let ca = s.data_dir().join("ca.crt");
    let mut full = vec![
        "--kubeconfig=/dev/null",
        "--server",
        &server,
        "--certificate-authority",
        path_str(&ca),
        "--client-certificate",
        path_str(crt),
        "--client-key",
        path_str(key),
    ];
    full.extend_from_slice(args);
    s.kubectl_cmd(&full)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl")
}

#[test]
fn a_bootstrap_token_becomes_an_approved_node_client_certificate() {
    let s = Server::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["token", "create", "--data-dir"])
        .arg(s.data_dir())
        .output()
        .expect("running skiff token create");
    assert!(out.status.success(), "{}", stderr(&out));
    let join = stdout(&out).trim().to_string();
    let token = join.split_once("::").expect("a join token").1.to_string();

    // The joining node asks with its bootstrap token; the request is approved and signed.
    let (key, request) = openssl_request(&s.data_dir(), "n9", "/O=system:nodes/CN=system:node:n9");
    let manifest = s.write(
        "n9-csr.json",
        &csr_manifest(
            "node-csr-n9",
            "kubernetes.io/kube-apiserver-client-kubelet",
            &request,
            "",
        ),
    );
    let out = with_token(&s, &token, &["create", "-f", path_str(&manifest)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let crt = issued_certificate(&s, "node-csr-n9");
    let csr = s.kubectl(&["get", "csr", "node-csr-n9"]);
    assert!(csr.contains("Approved,Issued"), "{csr}");
    assert!(csr.contains("system:bootstrap:"), "the requestor: {csr}");
    let reason = s.kubectl(&[
        "get",
        "csr",
        "node-csr-n9",
        "-o",
        "jsonpath={.status.conditions[0].reason}",
    ]);
    assert_eq!(reason, "AutoApproved");
    // The certificate is the node's identity.
    let who = with_certificate(&s, &crt, &key, &["auth", "whoami"]);
    let who = stdout(&who);
    assert!(who.contains("system:node:n9"), "{who}");
    assert!(who.contains("system:nodes"), "{who}");

    // Another client's request waits for `kubectl certificate approve`, and gets the lifetime
    // it asked for.
    let (key, request) = openssl_request(&s.data_dir(), "carol", "/CN=carol/O=dev");
    s.kubectl_stdin(
        &["create", "-f", "-"],
        &csr_manifest(
            "carol",
            "kubernetes.io/kube-apiserver-client",
            &request,
            r#", "expirationSeconds": 3600"#,
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    let csr = s.kubectl(&["get", "csr", "carol"]);
    assert!(csr.contains("Pending") && csr.contains("60m"), "{csr}");
    s.kubectl(&["certificate", "approve", "carol"]);
    let crt = issued_certificate(&s, "carol");
    let who = stdout(&with_certificate(&s, &crt, &key, &["auth", "whoami"]));
    assert!(who.contains("carol") && who.contains("dev"), "{who}");
    let lifetime = |secs: &str| {
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-checkend", secs, "-in"])
            .arg(&crt)
            .status()
            .unwrap()
            .success()
    };
    assert!(lifetime("3000"), "valid for the next 50 minutes");
    assert!(!lifetime("4000"), "expired after the hour asked for");

    // A denied request is never signed.
    let (_, request) = openssl_request(&s.data_dir(), "dave", "/CN=dave");
    s.kubectl_stdin(
        &["create", "-f", "-"],
        &csr_manifest("dave", "kubernetes.io/kube-apiserver-client", &request, ""),
    );
    s.kubectl(&["certificate", "deny", "dave"]);
    std::thread::sleep(Duration::from_millis(500));
    let csr = s.kubectl(&["get", "csr", "dave"]);
    assert!(csr.contains("Denied") && !csr.contains("Issued"), "{csr}");
}

#[test]
fn approving_a_request_needs_approve_on_its_signer() {
    let s = Server::start();
    let erin = s.user_kubeconfig("erin", &[]);
    // Erin may write approvals and statuses of requests, not approve for any signer.
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "csr-writer"},
        "rules": [{"apiGroups": ["certificates.k8s.io"],
            "resources": ["certificatesigningrequests", "certificatesigningrequests/approval",
                "certificatesigningrequests/status"],
            "verbs": ["get", "list", "watch", "update", "patch"]}]}"#,
    );
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "erin-csr",
        "--clusterrole=csr-writer",
        "--user=erin",
    ]);
    let (_, request) = openssl_request(&s.data_dir(), "frank", "/CN=frank");
    s.kubectl_stdin(
        &["create", "-f", "-"],
        &csr_manifest("frank", "kubernetes.io/kube-apiserver-client", &request, ""),
    );
    let refused = r#"user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#;
    eventually("erin's approval refused for the signer", || {
        let out = as_user(&s, &erin, &["certificate", "approve", "frank"]);
        match (out.status.success(), stderr(&out)) {
            (false, e) if e.contains(refused) && e.contains("forbidden") => Ok(()),
            (ok, e) => Err(format!("success {ok}: {e}")),
        }
    });
    let out = as_user(&s, &erin, &["certificate", "deny", "frank"]);
    assert!(stderr(&out).contains(refused), "{}", stderr(&out));
    // Nor does the status subresource approve.
    let out = as_user(
        &s,
        &erin,
        &[
            "patch",
            "csr",
            "frank",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "Sneaky", "message": "x"}]}}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csr = s.kubectl(&["get", "csr", "frank"]);
    assert!(csr.contains("Pending"), "{csr}");

    // `approve` on the signer, by name, lets her.
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "client-signer-approver"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": ["kubernetes.io/kube-apiserver-client"], "verbs": ["approve"]}]}"#,
    );
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "erin-signer",
        "--clusterrole=client-signer-approver",
        "--user=erin",
    ]);
    eventually("erin approves", || {
        let out = as_user(&s, &erin, &["certificate", "approve", "frank"]);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| stderr(&out))
    });
    issued_certificate(&s, "frank");
    let csr = s.kubectl(&["get", "csr", "frank"]);
    assert!(csr.contains("Approved,Issued"), "{csr}");
}

#[test]
fn the_kubernetes_service_names_the_api_server() {
    let s = Server::start_cluster();
    let port = s.port.to_string();
    let endpoints = s.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(endpoints, format!("127.0.0.1:{port}"));
    let slice = s.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "jsonpath={.items[*].endpoints[0].addresses[0]}:{.items[*].ports[0].port}",
    ]);
    assert_eq!(slice, format!("127.0.0.1:{port}"));
    // The controllers leave them alone (the Service has no selector).
    std::thread::sleep(Duration::from_secs(2));
    let again = s.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    assert_eq!(again, port);
}

#[test]
fn impersonation_needs_the_impersonate_verb() {
    let s = Server::start();
    let alice = s.user_kubeconfig("alice", &[]);
    let out = as_user(&s, &alice, &["--as=bob", "get", "--raw", "/api/v1/pods"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        stderr(&out)
    );
    s.kubectl(&[
        "create",
        "clusterrole",
        "impersonator",
        "--verb=impersonate",
        "--resource=users,groups",
    ]);
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "alice-impersonates",
        "--clusterrole=impersonator",
        "--user=alice",
    ]);
    eventually("alice acts as bob in dev", || {
        let out = as_user(
            &s,
            &alice,
            &["--as=bob", "--as-group=dev", "auth", "whoami"],
        );
        let who = stdout(&out);
        if who.contains("bob") && who.contains("[dev system:authenticated]") {
            Ok(())
        } else {
            Err(format!("{who} {}", stderr(&out)))
        }
    });
    // Acting as bob, alice has bob's rights, not hers.
    let out = as_user(&s, &alice, &["--as=bob", "get", "pods"]);
    assert!(
        stderr(&out).contains("User \"bob\" cannot list resource \"pods\""),
        "{}",
        stderr(&out)
    );
    // Service accounts are a separate permission; the administrator holds it.
    let out = as_user(
        &s,
        &alice,
        &[
            "--as=system:serviceaccount:default:default",
            "get",
            "--raw",
            "/api/v1/pods",
        ],
    );
    assert!(
        stderr(&out).contains("cannot impersonate resource \"serviceaccounts\""),
        "{}",
        stderr(&out)
    );
    let who = s.kubectl(&[
        "--as=system:serviceaccount:default:default",
        "auth",
        "whoami",
    ]);
    assert!(
        who.contains(
            "[system:serviceaccounts system:serviceaccounts:default system:authenticated]"
        ),
        "{who}"
    );
}
