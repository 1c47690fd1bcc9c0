//! Hostile clients through the real request handlers over a real store. Every body decoder and
//! patch type against random and mutated input: the answer is a success or a client error
//! (4xx), never a 5xx or a crash; the amplifying inputs (patches that copy, deep nesting, YAML
//! aliases) are refused; a watcher that stops reading is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use proptest::prelude::*;
use serde_json::{Value, json};
use skiff_apiserver::ApiServer;
use skiff_apiserver::alloc::NetworkConfig;
use skiff_apiserver::handlers::{WriteOptions, parse_target};
use skiff_apiserver::resources;
use skiff_store::embedded::EmbeddedStore;

/// A server over a fresh store holding namespace `default`, ConfigMap `cm` and Deployment `d`.
struct Fixture {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    app: Arc<ApiServer>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("store");
        let mut app = ApiServer::new(
            Arc::new(store),
            NetworkConfig::default(),
            Duration::from_secs(60),
        );
        Arc::get_mut(&mut app)
            .expect("the only reference")
            .slow_watcher_timeout = Duration::from_secs(1);
        let f = Self { _dir: dir, rt, app };
        let opts = WriteOptions::default();
        f.rt.block_on(async {
            let create = |group, plural, ns: Option<&'static str>, obj: Value| {
                let app = f.app.clone();
                let opts = opts.clone();
                async move {
                    let r = resources::find(group, "v1", plural).expect("served");
                    app.create(r, ns, obj, &opts).await.expect("fixture object");
                }
            };
            create(
                "",
                "namespaces",
                None,
                json!({"metadata": {"name": "default"}}),
            )
            .await;
            create(
                "",
                "configmaps",
                Some("default"),
                json!({"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"k": "v"}}),
            )
            .await;
            create("apps", "deployments", Some("default"), json!({
                "metadata": {"name": "d"},
                "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]}}}}))
            .await;
        });
        f
    }

    fn response(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> axum::response::Response {
        let target = parse_target(path)
            .expect("a resource path")
            .expect("served");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("content type"),
        );
        let query: HashMap<String, String> = skiff_apiserver::parse_query(Some(query));
        self.rt.block_on(
            self.app
                .serve_resource(target, method, query, headers, Bytes::from(body)),
        )
    }

    /// Serves one request; returns the status code and the body.
    fn call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        let resp = self.response(method, path, query, content_type, body);
        let code = resp.status().as_u16();
        let body = self
            .rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .expect("response body");
        (code, String::from_utf8_lossy(&body).into_owned())
    }
}

fn assert_client_answer(what: &str, (code, body): &(u16, String)) {
    assert!(
        (200..300).contains(code) || (400..500).contains(code),
        "{what}: answered {code}: {body}"
    );
}

const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "resourceVersion",
    "uid",
    "data",
    "binaryData",
    "spec",
    "status",
    "replicas",
    "selector",
    "template",
    "containers",
    "env",
    "image",
    "value",
    "kind",
    "apiVersion",
    "op",
    "path",
    "from",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$deleteFromPrimitiveList/finalizers",
    "a",
    "k",
];

const POINTERS: &[&str] = &[
    "",
    "/",
    "/data",
    "/data/k",
    "/data/new",
    "/metadata",
    "/metadata/labels",
    "/metadata/labels/a",
    "/metadata/name",
    "/metadata/resourceVersion",
    "/metadata/finalizers",
    "/metadata/finalizers/-",
    "/spec/replicas",
    "/spec/template/spec/containers",
    "/spec/template/spec/containers/0",
    "/spec/template/spec/containers/-",
    "/spec/template/spec/containers/0/env/0",
    "/t",
    "/t/-",
    "/t/0",
    "/~1x~0",
    "/data/99999999999999999999",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z$/.~-]{0,6}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        "[a-zA-Z0-9:/. -]{0,12}".prop_map(Value::from),
        prop::sample::select(&["replace", "delete", "merge", "busybox", "v1", "ConfigMap"][..])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_patch_op() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["add", "remove", "replace", "move", "copy", "test", "bogus"][..]),
        prop::sample::select(POINTERS),
        prop::sample::select(POINTERS),
        json_value(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        )
}

/// A patch body: structured for its type most of the time, any JSON otherwise.
fn patch_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(json_patch_op(), 0..12).prop_map(|ops| Value::Array(ops).to_string().into_bytes()),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A valid body with a few bytes changed, cut short or repeated.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    prop::collection::vec((0..n, any::<u8>(), 0u8..3), 1..6).prop_map(move |edits| {
        let mut b = valid.clone();
        for (at, byte, how) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match how {
                0 if !b.is_empty() => b[at] = byte,
                1 => b.truncate(at),
                _ => {
                    let tail = b[at..].to_vec();
                    b.extend_from_slice(&tail);
                }
            }
        }
        b
    })
}

const BODY_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/cbor",
    "text/plain",
];

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn configmap_json() -> Vec<u8> {
    br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","labels":{"a":"b"}},"data":{"k":"v"}}"#.to_vec()
}

fn configmap_yaml() -> Vec<u8> {
    b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\n  labels: {a: b}\ndata:\n  k: &v v\n  j: *v\n".to_vec()
}

fn configmap_protobuf() -> Vec<u8> {
    // k8s\0, TypeMeta{apiVersion v1, kind ConfigMap}, raw ConfigMap{metadata{name z}, data{k: v}}.
    let mut b = b"k8s\0".to_vec();
    b.extend_from_slice(b"\x0a\x0f\x0a\x02v1\x12\x09ConfigMap");
    b.extend_from_slice(b"\x12\x0d\x0a\x03\x0a\x01z\x12\x06\x0a\x01k\x12\x01v");
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_to_every_decoder(
        ct in prop::sample::select(BODY_TYPES),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            json_value().prop_map(|v| v.to_string().into_bytes()),
        ],
        put in any::<bool>(),
    ) {
        let f = fixture();
        let answer = if put {
            f.call(Method::PUT, "/api/v1/namespaces/default/configmaps/cm", "", ct, body)
        } else {
            f.call(Method::POST, "/api/v1/namespaces/default/configmaps", "", ct, body)
        };
        assert_client_answer(ct, &answer);
    }

    #[test]
    fn mutated_bodies_to_every_decoder(
        (ct, body) in prop_oneof![
            mutated(configmap_json()).prop_map(|b| ("application/json", b)),
            mutated(configmap_yaml()).prop_map(|b| ("application/yaml", b)),
            mutated(configmap_protobuf()).prop_map(|b| ("application/vnd.kubernetes.protobuf", b)),
        ],
        strict in any::<bool>(),
    ) {
        let f = fixture();
        let query = if strict { "fieldValidation=Strict" } else { "" };
        let answer = f.call(Method::POST, "/api/v1/namespaces/default/configmaps", query, ct, body);
        assert_client_answer(ct, &answer);
    }

    #[test]
    fn random_patches_of_every_type(
        ct in prop::sample::select(PATCH_TYPES),
        body in patch_body(),
        path in prop::sample::select(&[
            "/api/v1/namespaces/default/configmaps/cm",
            "/apis/apps/v1/namespaces/default/deployments/d",
            "/apis/apps/v1/namespaces/default/deployments/d/scale",
            "/apis/apps/v1/namespaces/default/deployments/d/status",
        ][..]),
        force in any::<bool>(),
    ) {
        let f = fixture();
        let query = if force { "fieldManager=prop&force=true" } else { "fieldManager=prop" };
        let answer = f.call(Method::PATCH, path, query, ct, body);
        assert_client_answer(ct, &answer);
    }
}

/// One fixture per test thread: building the schemas for each case would dominate the run.
fn fixture() -> std::rc::Rc<Fixture> {
    thread_local! {
        static F: std::rc::Rc<Fixture> = std::rc::Rc::new(Fixture::new());
    }
    F.with(|f| f.clone())
}

#[test]
fn the_doubling_json_patch_is_refused() {
    let f = fixture();
    let mut ops = vec![json!({"op": "add", "path": "/data/t", "value": ["x".repeat(1000)]})];
    ops.extend((0..52).map(|_| json!({"op": "copy", "from": "/data/t", "path": "/data/t/-"})));
    let (code, body) = f.call(
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/cm",
        "",
        "application/json-patch+json",
        Value::Array(ops).to_string().into_bytes(),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("RequestEntityTooLarge"), "{body}");
}

#[test]
fn an_object_past_the_store_limit_is_refused() {
    let f = fixture();
    // 2 MiB in one value: under the body limit, over the stored-object limit.
    let big = json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(2 << 20)}});
    let (code, body) = f.call(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        "",
        "application/json",
        big.to_string().into_bytes(),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("more than the limit of 1572864"), "{body}");
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused() {
    let f = fixture();
    let post = |ct: &str, body: Vec<u8>| {
        f.call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "",
            ct,
            body,
        )
    };
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, body) = post("application/json", deep_json.into_bytes());
    assert_eq!(code, 400, "{body}");
    let deep_yaml = format!(
        "data:\n  k: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (code, body) = post("application/yaml", deep_yaml.into_bytes());
    assert_eq!(code, 400, "{body}");
    // Billion laughs: each level refers to the one before ten times.
    let mut bomb = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    bomb.push_str("metadata: {name: bomb}\n");
    let (code, body) = post("application/yaml", bomb.into_bytes());
    assert_eq!(code, 400, "{body}");
    let deep_patch = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    for ct in PATCH_TYPES {
        let (code, body) = f.call(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/cm",
            "fieldManager=prop",
            ct,
            deep_patch.clone().into_bytes(),
        );
        assert_eq!(code, 400, "{ct}: {body}");
    }
}

#[test]
fn a_watcher_that_stops_reading_is_closed() {
    let f = Fixture::new();
    let resp = f.response(
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        "watch=1&resourceVersion=1",
        "application/json",
        vec![],
    );
    assert_eq!(resp.status().as_u16(), 200);
    let r = resources::find("", "v1", "configmaps").expect("served");
    let delivered = f.rt.block_on(async {
        // More events than the watch buffers, while nobody reads.
        for i in 0..600 {
            let cm = json!({"metadata": {"name": format!("w{i}")}});
            f.app
                .create(r, Some("default"), cm, &WriteOptions::default())
                .await
                .expect("create");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        // What was buffered is still delivered, then the watch ends.
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX);
        tokio::time::timeout(Duration::from_secs(20), body)
            .await
            .expect("the watch was closed")
            .expect("body")
    });
    let lines = delivered
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(lines > 0 && lines < 600, "{lines} events delivered");
}

#[test]
fn a_watch_of_a_large_collection_streams_its_initial_state_page_by_page() {
    use futures::StreamExt;
    let f = Fixture::new();
    let r = resources::find("", "v1", "configmaps").expect("served");
    let total = f.rt.block_on(async {
        // Over two pages of initial state, besides the fixture's "cm".
        for i in 0..1100 {
            let cm = json!({"metadata": {"name": format!("i{i:04}"), "labels": {"odd": (i % 2).to_string()}}});
            f.app
                .create(r, Some("default"), cm, &WriteOptions::default())
                .await
                .expect("create");
        }
        1100
    });
    let resp = f.response(
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        "watch=1&labelSelector=odd%3D1&sendInitialEvents=true&allowWatchBookmarks=true",
        "application/json",
        vec![],
    );
    let lines: Vec<Value> = f.rt.block_on(async {
        let mut body = resp.into_body().into_data_stream();
        let mut text = Vec::new();
        let mut lines = Vec::new();
        while lines.last().is_none_or(|l: &Value| l["type"] != "BOOKMARK") {
            let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
                .await
                .expect("the initial events in time")
                .expect("an open watch")
                .expect("a chunk");
            text.extend_from_slice(&chunk);
            while let Some(end) = text.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = text.drain(..=end).collect();
                lines.push(serde_json::from_slice(&line).expect("a JSON line"));
            }
        }
        lines
    });
    let added: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "ADDED")
        .filter_map(|l| l["object"]["metadata"]["name"].as_str())
        .collect();
    let want: Vec<String> = (0..total)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("i{i:04}"))
        .collect();
    assert_eq!(added, want);
    assert_eq!(
        lines.len(),
        added.len() + 1,
        "only ADDED lines, then the bookmark"
    );
}

#[test]
fn an_unpaged_list_is_streamed_page_by_page() {
    use futures::StreamExt;
    let f = Fixture::new();
    let r = resources::find("", "v1", "configmaps").expect("served");
    let payload = "x".repeat(200);
    f.rt.block_on(async {
        // Over two store pages, besides the fixture's "cm".
        for i in 0..1100 {
            let cm = json!({"metadata": {"name": format!("l{i:04}"), "labels": {"odd": (i % 2).to_string()}},
                "data": {"p": payload}});
            f.app
                .create(r, Some("default"), cm, &WriteOptions::default())
                .await
                .expect("create");
        }
    });
    for (query, want) in [
        ("labelSelector=odd%3D1", 550),
        ("", 1101),
        ("resourceVersion=0&labelSelector=odd", 1100),
    ] {
        let resp = f.response(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            query,
            "application/json",
            vec![],
        );
        assert_eq!(resp.status().as_u16(), 200);
        let chunks: Vec<Bytes> = f.rt.block_on(
            resp.into_body()
                .into_data_stream()
                .map(|c| c.expect("a chunk"))
                .collect(),
        );
        assert!(
            chunks.len() > 1,
            "{query}: one chunk of {} bytes",
            chunks[0].len()
        );
        let list: Value = serde_json::from_slice(&chunks.concat()).expect("a JSON list");
        assert_eq!(list["kind"], "ConfigMapList");
        assert!(list["metadata"]["resourceVersion"].as_str().is_some());
        let items = list["items"].as_array().expect("items");
        assert_eq!(items.len(), want, "{query}");
        let mine = items.iter().filter(|i| i["metadata"]["name"] != "cm");
        assert!(mine.clone().all(|i| i["data"]["p"] == payload.as_str()));
        assert_eq!(mine.count(), want.min(1100), "{query}");
    }
}
