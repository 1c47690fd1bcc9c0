"""The official Python `kubernetes` client against skiff server.

Run by tests/python.rs with KUBECONFIG pointing at a fresh server started with
`--compaction-interval 1 --bookmark-interval 1`.
"""
import json
import os
import ssl
import time
import unittest
import urllib.error
import urllib.request

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(os.environ["KUBECONFIG"])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "py"


def raw(method, path, body=None, content_type="application/json"):
    """A request with the admin certificate, below the client library: (code, decoded body)."""
    cfg = client.Configuration.get_default_copy()
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    req = urllib.request.Request(cfg.host + path, data=body, method=method,
                                 headers={"Content-Type": content_type, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def cm(name, labels=None, data=None, finalizers=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}, finalizers=finalizers),
        data=data or {"k": "v"},
    )


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))

    def test_list_selectors_and_pages(self):
        for i in range(25):
            v1.create_namespaced_config_map(NS, cm(f"page-{i:02}", labels={"set": "pages", "odd": str(i % 2)}))
        items = v1.list_namespaced_config_map(NS, label_selector="set=pages,odd=1").items
        self.assertEqual(len(items), 12)
        items = v1.list_namespaced_config_map(NS, field_selector="metadata.name=page-07").items
        self.assertEqual([i.metadata.name for i in items], ["page-07"])
        names, token = [], None
        while True:
            page = v1.list_namespaced_config_map(NS, label_selector="set=pages", limit=10, _continue=token)
            self.assertLessEqual(len(page.items), 10)
            names += [i.metadata.name for i in page.items]
            token = page.metadata._continue
            if not token:
                break
        self.assertEqual(names, [f"page-{i:02}" for i in range(25)])
        with self.assertRaises(ApiException) as e:
            v1.list_namespaced_config_map(NS, field_selector="data.k=v")
        self.assertEqual(e.exception.status, 400)

    def test_watch_resumes_from_a_resource_version(self):
        first = v1.create_namespaced_config_map(NS, cm("w-first", labels={"set": "watch"}))
        rv = first.metadata.resource_version
        v1.create_namespaced_config_map(NS, cm("w-second", labels={"set": "watch"}))
        v1.patch_namespaced_config_map("w-first", NS, {"data": {"k": "changed"}})
        v1.delete_namespaced_config_map("w-second", NS)
        seen = []
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="set=watch",
                           resource_version=rv, timeout_seconds=10):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 3:
                w.stop()
        self.assertEqual(seen, [("ADDED", "w-second"), ("MODIFIED", "w-first"), ("DELETED", "w-second")])

    def test_watch_bookmarks(self):
        w = watch.Watch()
        rv = v1.list_namespaced_config_map(NS).metadata.resource_version
        types = []
        for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=rv,
                           allow_watch_bookmarks=True, timeout_seconds=10):
            types.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                w.stop()
        self.assertIn("BOOKMARK", types)

    def test_compacted_resource_version_is_gone(self):
        # The server compacts every second; keep writing until the first revision is history.
        deadline = time.time() + 60
        while True:
            v1.create_namespaced_config_map(NS, cm(f"gone-{time.time_ns()}"))
            try:
                for _ in watch.Watch().stream(v1.list_namespaced_config_map, NS, resource_version="1",
                                              timeout_seconds=1):
                    pass
            except ApiException as e:
                self.assertEqual(e.status, 410)
                break
            self.assertLess(time.time(), deadline, "revision 1 was never compacted")
            time.sleep(0.2)

    def test_update_conflict(self):
        obj = v1.create_namespaced_config_map(NS, cm("conflict"))
        v1.patch_namespaced_config_map("conflict", NS, {"metadata": {"labels": {"x": "1"}}})
        obj.data = {"k": "stale"}
        with self.assertRaises(ApiException) as e:
            v1.replace_namespaced_config_map("conflict", NS, obj)
        self.assertEqual(e.exception.status, 409)
        self.assertEqual(json.loads(e.exception.body)["reason"], "Conflict")
        with self.assertRaises(ApiException) as e:
            v1.create_namespaced_config_map(NS, cm("conflict"))
        self.assertEqual(json.loads(e.exception.body)["reason"], "AlreadyExists")

    def test_invalid_is_422_with_causes(self):
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name="bad"),
                           spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="")]))
        with self.assertRaises(ApiException) as e:
            v1.create_namespaced_pod(NS, pod)
        self.assertEqual(e.exception.status, 422)
        causes = json.loads(e.exception.body)["details"]["causes"]
        self.assertIn("spec.containers[0].image", [c["field"] for c in causes])

    def test_generate_name_defaults_and_generation(self):
        d = client.V1Deployment(
            metadata=client.V1ObjectMeta(generate_name="gen-"),
            spec=client.V1DeploymentSpec(
                selector=client.V1LabelSelector(match_labels={"app": "g"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "g"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx:1.27")]))))
        made = apps.create_namespaced_deployment(NS, d)
        self.assertTrue(made.metadata.name.startswith("gen-") and len(made.metadata.name) == 9)
        self.assertEqual(made.spec.replicas, 1)
        self.assertEqual(made.spec.strategy.type, "RollingUpdate")
        self.assertEqual(made.metadata.generation, 1)
        changed = apps.patch_namespaced_deployment(made.metadata.name, NS, {"metadata": {"labels": {"a": "b"}}})
        self.assertEqual(changed.metadata.generation, 1)
        changed = apps.patch_namespaced_deployment(made.metadata.name, NS, {"spec": {"replicas": 3}})
        self.assertEqual(changed.metadata.generation, 2)
        scale = apps.read_namespaced_deployment_scale(made.metadata.name, NS)
        self.assertEqual((scale.spec.replicas, scale.status.selector), (3, "app=g"))

    def test_pod_binding_and_graceful_delete(self):
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name="p"),
                           spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]))
        v1.create_namespaced_pod(NS, pod)
        body = client.V1Binding(metadata=client.V1ObjectMeta(name="p"),
                                target=client.V1ObjectReference(kind="Node", name="node-1"))
        v1.create_namespaced_pod_binding("p", NS, body, _preload_content=False)
        self.assertEqual(v1.read_namespaced_pod("p", NS).spec.node_name, "node-1")
        # On a node, delete only marks the pod until its kubelet confirms with grace 0.
        v1.delete_namespaced_pod("p", NS)
        marked = v1.read_namespaced_pod("p", NS)
        self.assertIsNotNone(marked.metadata.deletion_timestamp)
        self.assertEqual(marked.metadata.deletion_grace_period_seconds, 30)
        v1.delete_namespaced_pod("p", NS, grace_period_seconds=0)
        with self.assertRaises(ApiException) as e:
            v1.read_namespaced_pod("p", NS)
        self.assertEqual(e.exception.status, 404)

    def test_finalizers_hold_deletion(self):
        v1.create_namespaced_config_map(NS, cm("fin", finalizers=["example.com/hold"]))
        v1.delete_namespaced_config_map("fin", NS)
        held = v1.read_namespaced_config_map("fin", NS)
        self.assertIsNotNone(held.metadata.deletion_timestamp)
        v1.patch_namespaced_config_map("fin", NS, {"metadata": {"finalizers": None}})
        with self.assertRaises(ApiException) as e:
            v1.read_namespaced_config_map("fin", NS)
        self.assertEqual(e.exception.status, 404)

    def test_service_allocation(self):
        svc = client.V1Service(metadata=client.V1ObjectMeta(name="s"),
                               spec=client.V1ServiceSpec(type="NodePort", ports=[client.V1ServicePort(port=80)]))
        made = v1.create_namespaced_service(NS, svc)
        self.assertTrue(made.spec.cluster_ip.startswith("10."))
        self.assertTrue(30000 <= made.spec.ports[0].node_port <= 32767)
        clash = client.V1Service(metadata=client.V1ObjectMeta(name="s2"),
                                 spec=client.V1ServiceSpec(cluster_ip=made.spec.cluster_ip, ports=[client.V1ServicePort(port=80)]))
        with self.assertRaises(ApiException) as e:
            v1.create_namespaced_service(NS, clash)
        self.assertEqual(e.exception.status, 422)

    def test_deletecollection(self):
        for i in range(3):
            v1.create_namespaced_config_map(NS, cm(f"dc-{i}", labels={"set": "dc"}))
        v1.create_namespaced_config_map(NS, cm("dc-keep"))
        v1.delete_collection_namespaced_config_map(NS, label_selector="set=dc")
        left = [i.metadata.name for i in v1.list_namespaced_config_map(NS).items if i.metadata.name.startswith("dc-")]
        self.assertEqual(left, ["dc-keep"])

    def test_raw_errors(self):
        self.assertEqual(raw("POST", f"/api/v1/namespaces/{NS}/configmaps/x", b"{}")[0], 405)
        v1.create_namespaced_pod(NS, client.V1Pod(
            metadata=client.V1ObjectMeta(name="sub"),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="i")])))
        self.assertEqual(raw("PUT", f"/api/v1/namespaces/{NS}/pods/sub/binding", b"{}")[0], 405)
        code, status = raw("POST", f"/api/v1/namespaces/{NS}/configmaps", b'{"apiVersion": "v1", ')
        self.assertEqual((code, status["reason"]), (400, "BadRequest"))
        code, status = raw("POST", f"/api/v1/namespaces/{NS}/configmaps", b"kind: [", "application/yaml")
        self.assertEqual((code, status["reason"]), (400, "BadRequest"))
        ok = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n"
        self.assertEqual(raw("POST", f"/api/v1/namespaces/{NS}/configmaps", ok, "application/yaml")[0], 201)
        self.assertEqual(raw("GET", f"/api/v1/namespaces/{NS}/configmaps/missing")[1]["reason"], "NotFound")
        self.assertEqual(raw("GET", "/api/v1/namespaces/nope/bogus")[0], 404)

    def test_no_client_certificate_is_401(self):
        cfg = client.Configuration.get_default_copy()
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        with urllib.request.urlopen(cfg.host + "/healthz", context=ctx) as r:
            self.assertEqual(r.read(), b"ok")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(cfg.host + "/api/v1/namespaces", context=ctx)
        self.assertEqual(e.exception.code, 401)


if __name__ == "__main__":
    unittest.main(verbosity=2)
