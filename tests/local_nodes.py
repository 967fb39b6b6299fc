"""Processes the tests and benchmarks start on 127.0.0.1: free ports (S3, the PACS, Ray), and Ray nodes
(`ray start --block` on ports of their own, each in a process group of its own, stopped last first)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict) -> subprocess.Popen:
    """`ray start --block` with its own ports, in a new session: killing its group stops this node alone."""
    ports = [f"--{name}-port={free_port()}" for name in ("node-manager", "object-manager", "dashboard-agent-listen",
                                                          "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")]
    return subprocess.Popen([RAY, "start", "--block", *args, *ports], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGTERM each node's group, the last started first (workers drain against a live head); SIGKILL after 120 s."""
    for node in reversed(nodes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(30)
