"""Writes the one layer (an uncompressed tar) of an image that runs this host's python3 with the
`kubernetes` client: the interpreter, the shared libraries it and its extension modules load, and
the modules the client imports to list pods and to report a refusal, compiled (no sources), each
at its host path; `/usr/local/bin/python3` runs it. Usage: python3 python_image.py LAYER.tar

Only what is loaded goes in (the client alone is 126 MB on disk): the stdlib and the `kubernetes`
package module by module, every other package a module imports whole (they are small and may
import more of themselves later, e.g. while a TLS connection is made).
"""

import http.server
import importlib.util
import io
import json
import marshal
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading

import kubernetes.client
import kubernetes.config


def exercise():
    """The in-cluster config, a pod list and a 403 against a local plain-HTTP server, so that
    what the client imports on the way (lazily too) is loaded."""
    pod = {"metadata": {"name": "p", "namespace": "default", "labels": {"a": "b"}},
           "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
           "status": {"phase": "Running", "startTime": "2024-01-01T00:00:00Z"}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "/namespaces/default/" in self.path:
                status, body = 200, {"kind": "PodList", "apiVersion": "v1", "items": [pod],
                                     "metadata": {"resourceVersion": "1"}}
            else:
                status, body = 403, {"kind": "Status", "status": "Failure", "reason": "Forbidden",
                                     "message": "forbidden", "code": 403}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as d:
        for name, text in (("token", "t"), ("ca.crt", "unused")):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        loader = kubernetes.config.incluster_config.InClusterConfigLoader(
            token_filename=os.path.join(d, "token"), cert_filename=os.path.join(d, "ca.crt"),
            try_refresh_token=False, environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                     "KUBERNETES_SERVICE_PORT": str(server.server_port)})
        config = kubernetes.client.Configuration()
        loader.load_and_set(config)
    config.host = f"http://127.0.0.1:{server.server_port}"
    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))
    assert api.list_namespaced_pod("default").items[0].metadata.name == "p"
    try:
        api.list_namespaced_pod("other")
        raise AssertionError("no 403")
    except kubernetes.client.ApiException as e:
        str(e)
    server.shutdown()


def site_dirs():
    return [p for p in sys.path if p.endswith("site-packages") or p.endswith("dist-packages")]


def files_to_ship():
    """Host paths of the loaded modules (packages other than the stdlib's and `kubernetes` whole),
    the `encodings` package (codecs are looked up by name) and the interpreter."""
    files = {os.path.realpath(sys.executable)}
    whole = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isfile(path):
            continue
        path = os.path.realpath(path)
        site = next((s for s in site_dirs() if path.startswith(s + os.sep)), None)
        if site is None:
            files.add(path)
            continue
        top = path[len(site) + 1:].split(os.sep)[0]
        if top == "kubernetes":
            files.add(path)
        else:
            whole.add(os.path.join(site, top))
    whole.add(os.path.dirname(os.path.realpath(sys.modules["encodings"].__file__)))
    for top in whole:
        if os.path.isfile(top):
            files.add(top)
            continue
        for root, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "tests", "test")]
            files.update(os.path.join(root, n) for n in names)
    return files


def shared_libraries(elf_files):
    """What ldd resolves for the ELF files (the dynamic loader among them)."""
    libs = set()
    for path in elf_files:
        out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", out):
            libs.add(lib)
    return libs


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def stripped(path):
    """The ELF file without its debugging sections (libpython alone loses 17 MB)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "stripped")
        subprocess.run(["strip", "--strip-debug", "-o", out, path], check=True)
        with open(out, "rb") as f:
            return f.read()


def compiled(path):
    """The module compiled, as a sourceless .pyc (its header's date and size are not checked)."""
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def write_layer(output, files):
    dirs = set()
    with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as tar:
        def add_dirs(path):
            parent = os.path.dirname(path)
            if parent in ("", "/") or parent in dirs:
                return
            add_dirs(parent)
            dirs.add(parent)
            add(parent.lstrip("/"), tarfile.DIRTYPE, 0o755)

        def add(name, kind, mode, data=b"", link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("dev", "proc", "sys", "etc", "usr/local/bin"):
            add_dirs("/" + d + "/x")
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
        add("usr/local/bin/python3", tarfile.SYMTYPE, 0o777, link=os.path.realpath(sys.executable))
        for path in sorted(files):
            name = path
            if path.endswith(".py"):
                name, data = path + "c", compiled(path)
            elif is_elf(path):
                data = stripped(path)
            else:
                with open(path, "rb") as f:
                    data = f.read()
            add_dirs(name)
            add(name.lstrip("/"), tarfile.REGTYPE, os.stat(path).st_mode & 0o755, data)


def main():
    exercise()
    files = files_to_ship()
    files |= shared_libraries([f for f in files if is_elf(f)])
    write_layer(sys.argv[1], files)


main()
