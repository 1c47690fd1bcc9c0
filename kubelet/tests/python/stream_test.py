"""The official Python `kubernetes` client's exec (`kubernetes.stream`, WebSocket
v4.channel.k8s.io) and logs against a real skiff server and kubelet.

Run by tests/python_stream.rs with KUBECONFIG pointing at the node's server and POD naming a
running busybox pod whose `main` container prints `started` and then `tick N` lines.
"""
import os
import time
import unittest

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(os.environ["KUBECONFIG"])
v1 = client.CoreV1Api()
POD = os.environ["POD"]
NS = "default"


def exec_(command, **kw):
    return stream(v1.connect_get_namespaced_pod_exec, POD, NS, command=command,
                  stderr=True, stdout=True, **kw)


class Exec(unittest.TestCase):
    def test_output(self):
        out = exec_(["sh", "-c", "echo out-line"], stdin=False, tty=False)
        self.assertEqual(out, "out-line\n")

    def test_stdin_stderr_and_exit_code(self):
        resp = exec_(["sh", "-c", "read x; echo got-$x; echo to-err >&2; exit 3"],
                     stdin=True, tty=False, _preload_content=False)
        resp.write_stdin("hello\n")
        out, err = "", ""
        deadline = time.time() + 20
        while resp.is_open() and time.time() < deadline:
            resp.update(timeout=1)
            if resp.peek_stdout():
                out += resp.read_stdout()
            if resp.peek_stderr():
                err += resp.read_stderr()
        self.assertFalse(resp.is_open(), "the stream did not end")
        self.assertEqual(out, "got-hello\n")
        self.assertEqual(err, "to-err\n")
        self.assertEqual(resp.returncode, 3)

    def test_missing_container(self):
        with self.assertRaises(Exception):
            stream(v1.connect_get_namespaced_pod_exec, POD, NS, container="nosuch",
                   command=["true"], stderr=True, stdout=True, stdin=False, tty=False)


class Logs(unittest.TestCase):
    def test_read(self):
        text = v1.read_namespaced_pod_log(POD, NS, container="main")
        self.assertTrue(text.startswith("started\ntick 1\n"), text)
        tail = v1.read_namespaced_pod_log(POD, NS, container="main", tail_lines=2)
        self.assertEqual(len(tail.splitlines()), 2, tail)

    def test_follow(self):
        resp = v1.read_namespaced_pod_log(POD, NS, container="main", follow=True, tail_lines=1,
                                          _preload_content=False)
        ticks = []
        deadline = time.time() + 20
        for line in resp.stream():
            ticks += [int(l.split()[1]) for l in line.decode().splitlines() if l.startswith("tick ")]
            if len(ticks) >= 4 or time.time() > deadline:
                break
        resp.release_conn()
        self.assertGreaterEqual(len(ticks), 4, ticks)
        self.assertEqual(ticks, list(range(ticks[0], ticks[0] + len(ticks))))


if __name__ == "__main__":
    unittest.main(verbosity=2)
