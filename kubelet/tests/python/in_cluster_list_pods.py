"""Run in a pod: lists the pods of the pod's namespace through the official client's in-cluster
configuration (the service-account token and ca.crt, the KUBERNETES_SERVICE_HOST/PORT the kubelet
sets); prints their names, or the refusal and exits 3."""

import json
import sys

from kubernetes import client, config

config.load_incluster_config()
with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
    namespace = f.read()
print("server:", client.Configuration.get_default_copy().host, flush=True)
try:
    pods = client.CoreV1Api().list_namespaced_pod(namespace)
except client.ApiException as e:
    print("status:", e.status)
    print("message:", json.loads(e.body)["message"])
    sys.exit(3)
print("pods:", " ".join(sorted(p.metadata.name for p in pods.items)))
