#!/usr/bin/env python3
"""Generates src/api/protobuf_fields.rs: the protobuf field numbers of the served Kubernetes types.

Field numbers are read from the prost declarations of the k8s-pb crate (Apache-2.0), JSON field
names from our own OpenAPI schemas (k8s-openapi). Usage:

    gen_protobuf_fields.py K8S_PB_SRC_DIR ALL_SCHEMAS_JSON > src/api/protobuf_fields.rs

where ALL_SCHEMAS_JSON is the union of `components.schemas` of the server's /openapi/v3 documents.
"""
import json
import os
import re
import sys

src, schemas_path = sys.argv[1], sys.argv[2]
schemas = json.load(open(schemas_path))

ROOTS = [
    "io.k8s.api.core.v1.Namespace", "io.k8s.api.core.v1.Pod", "io.k8s.api.core.v1.Node",
    "io.k8s.api.core.v1.Service", "io.k8s.api.core.v1.Endpoints", "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.Secret", "io.k8s.api.core.v1.Event", "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.core.v1.Binding", "io.k8s.api.apps.v1.Deployment", "io.k8s.api.apps.v1.ReplicaSet",
    "io.k8s.api.apps.v1.DaemonSet", "io.k8s.api.batch.v1.Job", "io.k8s.api.coordination.v1.Lease",
    "io.k8s.api.apps.v1.ControllerRevision",
    "io.k8s.api.discovery.v1.EndpointSlice", "io.k8s.api.events.v1.Event",
    "io.k8s.api.autoscaling.v1.Scale", "io.k8s.api.policy.v1.Eviction",
    "io.k8s.api.scheduling.v1.PriorityClass",
    "io.k8s.api.rbac.v1.Role", "io.k8s.api.rbac.v1.ClusterRole", "io.k8s.api.rbac.v1.RoleBinding",
    "io.k8s.api.rbac.v1.ClusterRoleBinding",
    "io.k8s.api.authentication.v1.TokenReview", "io.k8s.api.authentication.v1.SelfSubjectReview",
    "io.k8s.api.authentication.v1.TokenRequest",
    "io.k8s.api.authorization.v1.SubjectAccessReview",
    "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
    "io.k8s.api.authorization.v1.LocalSubjectAccessReview",
    "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
    "io.k8s.api.certificates.v1.CertificateSigningRequest",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
]
SPECIAL = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time", "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString", "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "io.k8s.apimachinery.pkg.runtime.RawExtension", "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Duration",
}
SCALARS = {"string": "Str", "bytes": "Bytes", "int32": "I32", "int64": "I64", "bool": "Bool", "double": "F64"}

structs = {}
for root, _, files in os.walk(src):
    if "mod.rs" not in files:
        continue
    rel = os.path.relpath(root, src)
    if rel == ".":
        continue
    pkg = "io.k8s." + rel.replace(os.sep, ".")
    modpath = rel.split(os.sep)
    lines = open(os.path.join(root, "mod.rs")).read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"pub struct (\w+) \{", lines[i])
        if not m:
            i += 1
            continue
        name = pkg + "." + m.group(1)
        fields = []
        i += 1
        while not lines[i].startswith("}"):
            a = re.match(r"\s*#\[prost\((.*)\)\]", lines[i])
            if a:
                attr = a.group(1)
                j = i + 1
                decl = ""
                while True:
                    decl += lines[j].strip()
                    if decl.endswith(",") and decl.count("<") == decl.count(">"):
                        break
                    j += 1
                fm = re.match(r"pub (r#\w+|\w+):\s*(.*),$", decl)
                if not fm:
                    sys.exit(f"cannot parse {decl!r}")
                fields.append((attr, fm.group(1), fm.group(2)))
                i = j
            i += 1
        structs[name] = (modpath, fields)


def resolve(modpath, ty):
    """The full name of the last type path in a Rust type."""
    inner = re.findall(r"((?:super::)*(?:\w+::)*[A-Z]\w*)", ty)
    inner = [t for t in inner if t.split("::")[-1] not in ("Option", "Vec", "String", "BTreeMap", "HashMap")]
    if not inner:
        sys.exit(f"cannot resolve {ty!r} in {modpath}")
    t = inner[-1]
    parts = t.split("::")
    ups = parts.count("super")
    rest = [p for p in parts if p != "super"]
    base = modpath[: len(modpath) - ups] if ups else modpath
    if len(rest) == 1:
        return "io.k8s." + ".".join(base + rest)
    return "io.k8s." + ".".join(base + rest)


def camel(snake):
    p = snake.split("_")
    return p[0] + "".join(x[:1].upper() + x[1:] for x in p[1:])


def json_name(msg, snake):
    props = schemas.get(msg, {}).get("properties", {})
    want = snake.replace("_", "").lower()
    for p in props:
        if p.lower() == want:
            return p
    fixed = {"r#type": "type", "raw": "Raw"}
    if snake in fixed:
        return fixed[snake]
    return camel(snake.lstrip("r#"))


out = {}
todo = list(ROOTS)
while todo:
    msg = todo.pop()
    if msg in out or msg in SPECIAL:
        continue
    if msg not in structs:
        sys.exit(f"unknown message {msg}")
    modpath, fields = structs[msg]
    rows = []
    for attr, fname, ty in fields:
        tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
        kind = attr.split(",")[0].strip()
        mapm = re.match(r'(?:btree_)?map = "string, (\w+)"', attr)
        if mapm:
            v = mapm.group(1)
            if v == "message":
                target = resolve(modpath, ty)
                todo.append(target)
                vty = f'Ty::Msg("{target}")'
            else:
                vty = "Ty::" + SCALARS[v]
            card = "Card::Map"
            tyx = vty
        else:
            if kind == "message":
                target = resolve(modpath, ty)
                todo.append(target)
                tyx = f'Ty::Msg("{target}")'
            elif kind.startswith("bytes"):
                tyx = "Ty::Bytes"
            else:
                tyx = "Ty::" + SCALARS[kind]
            card = "Card::Many" if "repeated" in attr else "Card::One"
        rows.append(f'        F {{ tag: {tag}, name: "{json_name(msg, fname)}", ty: {tyx}, card: {card} }},')
    out[msg] = rows

print("// @generated by tools/gen_protobuf_fields.py from the prost declarations of the k8s-pb")
print("// crate (field numbers) and our OpenAPI schemas (JSON names). Do not edit by hand.")
print()
print("use super::protobuf::{Card, F, Ty};")
print()
print("pub static MESSAGES: &[(&str, &[F])] = &[")
for msg in sorted(out):
    print(f'    ("{msg}", &[')
    print("\n".join(out[msg]))
    print("    ]),")
print("];")
