"""A real Ray cluster on this machine, for tests and benchmarks: a head node and worker nodes over loopback.

Every node is a ``ray start`` in its own session (``start_new_session``), so the
processes it leaves behind (GCS, raylet, agents, workers) are found by session
id and stopped without touching any other Ray on the machine (never ``ray stop``,
which stops every Ray of the user). Temp folders are short (a Unix socket path
must stay under 108 bytes) and removed at the end.

    with LocalRayCluster(nodes=2, cpus_per_node=1) as cluster:
        cluster.address            # "127.0.0.1:PORT", for ray.init / dsbuild --ray-address
        cluster.kill_raylet(1)     # the second node's raylet dies (SIGKILL)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's floor is 75 MiB

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
"""Environment of every node and of every driver that connects to one (``os.environ.update(RAY_ENV)``): no usage
stats, and no token authentication — a loopback test cluster. Ray ≥ 2.5x turns token authentication on for a
cluster whenever ``~/.ray/auth_token`` exists (any earlier ``ray.init()`` without an address writes one), and then
a node or driver without the token cannot join; with the mode set explicitly, the file is ignored."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:
                out.append(int(name))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (alive ones), children reaped by them included."""
    total = 0
    for pid in pids:
        fields = proc_stat(pid)
        if fields is not None:
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def _ray_cli() -> list[str]:
    """``ray`` of this interpreter (a thin venv may have no ``ray`` script of its own)."""
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]


class LocalRayCluster:
    """``nodes`` Ray nodes on 127.0.0.1 with ``cpus_per_node`` CPUs each (see module doc)."""

    def __init__(self, *, nodes: int = 2, cpus_per_node: int = 1, object_store: int = OBJECT_STORE_BYTES,
                 env: dict[str, str] | None = None) -> None:
        self.nodes, self.cpus = nodes, cpus_per_node
        self.object_store = object_store
        self.env = {**os.environ, **RAY_ENV, **(env or {})}
        self.tmp = Path(tempfile.mkdtemp(prefix="dsr"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sessions: list[int] = []  # one per node, head first

    def _start(self, *args: str) -> int:
        port_args = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                     "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                     "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
                     "--min-worker-port", "0", "--max-worker-port", "0"]
        cmd = [*_ray_cli(), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
               "--object-store-memory", str(self.object_store), "--disable-usage-stats", *port_args]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
        return proc.pid

    def start(self) -> "LocalRayCluster":
        try:
            self._start("--head", "--port", str(self.port), "--temp-dir", str(self.tmp), "--include-dashboard=false")
            for _ in range(self.nodes - 1):
                self._start("--address", self.address)
            self.wait_for_nodes(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self) -> None:
        """Start one more worker node (e.g. to replace a killed one) and wait until it is alive."""
        self._start("--address", self.address)
        self.wait_for_nodes(self.alive_nodes())

    def alive_nodes(self) -> int:
        """Nodes whose raylet still runs."""
        alive = 0
        for node in range(len(self.sessions)):
            try:
                self.raylet_pid(node)
                alive += 1
            except RuntimeError:
                pass
        return alive

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        """Wait until ``n`` nodes are alive in the cluster (asked in a separate process: no ray.init here)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print('alive nodes:', sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                                 text=True, timeout=timeout)
            # Ray writes its own warnings to stdout too ("(2) raylet has lagging heartbeats …" on a loaded machine)
            counts = [int(line.split(":")[1]) for line in out.stdout.splitlines() if line.startswith("alive nodes: ")]
            alive = counts[-1] if out.returncode == 0 and counts else -1
            if alive >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{alive} of {n} Ray nodes alive after {timeout:.0f} s: {out.stderr[-2000:]}")
            time.sleep(1)

    def pids(self, node: int | None = None) -> list[int]:
        """Processes of one node (0 = head) or of all nodes."""
        sessions = self.sessions if node is None else [self.sessions[node]]
        return [pid for sid in sessions for pid in session_pids(sid)]

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every live process of the cluster (workers included)."""
        return cpu_seconds(self.pids())

    def raylet_pid(self, node: int) -> int:
        for pid in self.pids(node):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                return pid
        raise RuntimeError(f"no raylet on node {node}")

    def worker_pids(self, node: int) -> list[int]:
        """Ray worker processes of ``node`` (process titles ``ray::IDLE``, ``ray::<task>``; agents excluded)."""
        out = []
        for pid in self.pids(node):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if title.startswith(b"ray::") and not title.endswith(b"Agent"):
                out.append(pid)
        return out

    def kill_raylet(self, node: int) -> None:
        """SIGKILL the raylet of ``node``: the node dies (its workers follow)."""
        os.kill(self.raylet_pid(node), signal.SIGKILL)

    def stop(self) -> None:
        """Stop every process of every node (SIGTERM, then SIGKILL after 3 s); remove the temp folder.

        3 s, not ``ray stop``'s 16: the GCS server and the runtime-env agent ignore SIGTERM for ~10 s, and a
        test cluster has nothing to save."""
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.pids():
                break
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
