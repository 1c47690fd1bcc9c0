#!/usr/bin/python3
"""A minimal CRI (runtime.v1) client for the containerd tests: runs one pod sandbox with a
given runtime handler, a container in it to its end, then a second one for ExecSync and
UpdateContainerResources; prints a JSON summary and removes the sandbox (after a failure the
test's guard cleans up instead). Messages are encoded by hand (the few fields of the CRI
protos it needs), so the only dependency is Debian's python3-grpcio.

usage: cri.py SOCKET HANDLER IMAGE LOG_DIR CGROUP_PARENT CMD...
"""
import json
import sys
import time

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    """A length-delimited (str/bytes/message) or varint (int/bool) field."""
    if isinstance(value, bool):
        return varint(num << 3) + varint(int(value))
    if isinstance(value, int):
        return varint(num << 3) + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields if v is not None)


def decode(buf):
    """Top-level fields of a message: {number: [values]} (bytes or int)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


NODE = 2  # NamespaceMode.NODE: the network namespace containerd runs in


def sandbox_config(log_dir, cgroup_parent):
    metadata = msg((1, "skiff-pod"), (2, "skiff-pod-uid"), (3, "default"), (4, 0))
    # network=NODE (the test runs containerd in a network namespace of its own, so that is
    # loopback only), pid=POD, ipc=POD.
    ns_options = msg((1, NODE))
    security = msg((1, ns_options))
    linux = msg((1, cgroup_parent), (2, security))
    # No hostname: with the node network the pod shares the node's UTS namespace.
    return msg((1, metadata), (3, log_dir), (8, linux))


def main():
    sock, handler, image, log_dir, cgroup_parent = sys.argv[1:6]
    cmd = sys.argv[6:]
    channel = grpc.insecure_channel("unix://" + sock)
    svc = "/runtime.v1.RuntimeService/"

    def call(method, request):
        # Generous bounds against a hang (normal calls take well under a second).
        try:
            return channel.unary_unary(svc + method)(request, timeout=30)
        except grpc.RpcError as e:
            raise SystemExit("CRI %s failed: %s: %s" % (method, e.code(), e.details()))

    pod_config = sandbox_config(log_dir, cgroup_parent)
    pod = decode(call("RunPodSandbox", msg((1, pod_config), (2, handler))))[1][0].decode()
    result = {"sandbox": pod}
    try:
        container_config = msg(
            (1, msg((1, "main"), (2, 0))),
            (2, msg((1, image))),
        ) + b"".join(field(3, c) for c in cmd) + msg((11, "main.log"))
        ctr = decode(
            call("CreateContainer", msg((1, pod), (2, container_config), (3, pod_config)))
        )[1][0].decode()
        result["container"] = ctr
        call("StartContainer", msg((1, ctr)))
        deadline = time.monotonic() + 30
        while True:
            if time.monotonic() > deadline:
                raise SystemExit("container %s never reported CONTAINER_EXITED" % ctr)
            status = decode(decode(call("ContainerStatus", msg((1, ctr))))[1][0])
            state = status.get(3, [0])[0]
            if state == 2:  # CONTAINER_EXITED
                code = status.get(7, [0])[0]
                result["exit_code"] = code - (1 << 64) if code >= 1 << 63 else code
                break
            time.sleep(0.05)
        call("RemoveContainer", msg((1, ctr)))

        # A second, long-running container: ExecSync into it, then UpdateContainerResources
        # of its memory limit (256 MiB -> 128 MiB), read back from inside.
        resources = msg((4, 256 << 20))
        sleeper_config = msg(
            (1, msg((1, "sleeper"), (2, 0))),
            (2, msg((1, image))),
        ) + field(3, "sleep") + field(3, "100000") + msg((11, "sleeper.log"), (15, msg((1, resources))))
        sleeper = decode(
            call("CreateContainer", msg((1, pod), (2, sleeper_config), (3, pod_config)))
        )[1][0].decode()
        result["sleeper"] = sleeper
        call("StartContainer", msg((1, sleeper)))
        read_limit = [
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ]

        def exec_sync(cmd):
            request = msg((1, sleeper)) + b"".join(field(2, c) for c in cmd) + msg((3, 60))
            reply = decode(call("ExecSync", request))
            code = reply.get(3, [0])[0]
            return reply.get(1, [b""])[0].decode().strip(), code

        # The pod shares one pid namespace: what is left of the first container (a child
        # its init started) must have been killed with it (the shim's `kill --all ID 9`).
        result["pod_processes"], _ = exec_sync(["ps", "-o", "pid,args"])
        result["limit_before"], result["exec_exit_code"] = exec_sync(read_limit)
        call("UpdateContainerResources", msg((1, sleeper), (2, msg((4, 128 << 20)))))
        result["limit_after"], _ = exec_sync(read_limit)
        call("StopContainer", msg((1, sleeper), (2, 0)))
        call("RemoveContainer", msg((1, sleeper)))
    except SystemExit as e:
        # No CRI cleanup after a failure (it would likely hang the same way): the test stops
        # this containerd and force-removes every task in its namespaces.
        raise SystemExit("%s (pod sandbox %s)" % (e.code, pod))
    call("StopPodSandbox", msg((1, pod)))
    call("RemovePodSandbox", msg((1, pod)))
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print("CRI call failed: %s: %s" % (e.code(), e.details()), file=sys.stderr)
        sys.exit(1)
