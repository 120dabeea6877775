"""A real pool on one machine: etcd members on loopback ports (data in tmp dirs), capsa daemons with
separate homes and ports, and `capsa scheduler` processes; every process started here is stopped
(and only those: by the PIDs we hold) when the fixture ends.

Jobs use host networking (the default), so three daemons on one host create no bridges or chains;
job cgroups are named by random job ids and cannot collide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from capsa.api.client import CapsaClient
from capsa.cluster.bundle import EtcdMember, PoolNodeSpec, write_cluster_bundle
from capsa.cluster.etcd import EtcdClient, EtcdTLS
from capsa.config import load_client_config
from capsa.pki import create_ca, issue_etcd_client_cert
from tests.fixtures.daemon import RunningDaemon, free_port

CAPSA = [sys.executable, "-m", "capsa"]
ETCD = "/usr/bin/etcd"


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class EtcdProc:
    member: EtcdMember
    data: Path
    log: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@dataclass
class PoolDaemon(RunningDaemon):
    name: str = ""
    cgroup2: Path | None = None   # start the daemon (and so its supervisor) in this cgroup v2 (partition tests)

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        command = [*CAPSA, "daemon"]
        if self.cgroup2 is not None:   # join first, then exec: every socket it opens belongs to the cgroup
            command = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup2), *command]
        self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited early: {self.log_path.read_text()[-3000:]}")
            try:
                with self.client() as c:
                    c.version()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"daemon {self.name} did not come up: {self.log_path.read_text()[-3000:]}")

    def client(self, role: str = "admin") -> CapsaClient:
        config = load_client_config(self.home.parent / f"client-{role}.yaml")
        return CapsaClient(config.select(self.name), timeout=60)

    def cli(self, *args: str, role: str = "admin", timeout: float = 120, input: bytes | None = None,
            check: bool = False) -> subprocess.CompletedProcess[bytes]:
        cmd = [*CAPSA, "--config", str(self.home.parent / f"client-{role}.yaml"), "--node", self.name, *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr.decode()}")
        return result


@dataclass
class Pool:
    root: Path
    etcd: list[EtcdProc] = field(default_factory=list)
    nodes: list[PoolDaemon] = field(default_factory=list)
    schedulers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _etcd_client: EtcdClient | None = None

    @property
    def server_yaml(self) -> Path:
        return self.nodes[0].home / "server.yaml"

    def start_scheduler(self, name: str, *, lease_ttl: int = 2) -> subprocess.Popen[bytes]:
        log = open(self.root / f"scheduler-{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([*CAPSA, "scheduler", "--server-config", str(self.server_yaml), "--name", name,
                                 "--lease-ttl", str(lease_ttl)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, CAPSA_HOME=str(self.nodes[0].home)))
        log.close()
        self.schedulers.append(proc)
        return proc

    def store(self) -> EtcdClient:
        """A direct etcd client for assertions (tests only: users go through a node's API)."""
        if self._etcd_client is None:
            from capsa.config import load_server_config

            config = load_server_config(self.server_yaml)
            assert config.cluster is not None and config.cluster.etcd_tls is not None
            self._etcd_client = EtcdClient(config.cluster.etcd, tls=EtcdTLS(
                config.tls.ca_pem, config.cluster.etcd_tls.cert_pem, config.cluster.etcd_tls.key_pem))
        return self._etcd_client

    def stop(self) -> None:
        for proc in self.schedulers:
            _stop(proc)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
            node.kill_supervisor()
        for member in self.etcd:
            member.stop()


def _etcd_args(m: EtcdMember, data: Path, certs: Path, cluster: str) -> list[str]:
    ca, cert, key = certs / ".." / "ca.pem", certs / f"{m.name}.pem", certs / f"{m.name}-key.pem"
    return [ETCD, "--name", m.name, "--data-dir", str(data),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", data.parent.name,
            "--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca), "--client-cert-auth",
            "--peer-cert-file", str(cert), "--peer-key-file", str(key), "--peer-trusted-ca-file", str(ca),
            "--peer-client-cert-auth", "--heartbeat-interval", "50", "--election-timeout", "500",
            "--listen-metrics-urls", "", "--log-level", "warn"]


def wait_etcd_ready(pool: Pool, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pool.store().put("/capsa-test/ready", "1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def running_pool(root: Path, *, nodes: int = 3, members: int = 3, lease_ttl: int = 2,
                 labels: dict[int, dict[str, str]] | None = None,
                 cgroups: dict[str, Path] | None = None) -> Iterator[Pool]:
    etcd_members = [EtcdMember(f"e{i}", "127.0.0.1", free_port(), free_port()) for i in range(members)]
    specs = [PoolNodeSpec(f"n{i}", f"127.0.0.1:{free_port()}", (labels or {}).get(i, {}),
                          home=root / f"n{i}" / "home") for i in range(nodes)]
    bundle = root / "bundle"
    write_cluster_bundle(bundle, nodes=specs, etcd=etcd_members, lease_ttl_s=lease_ttl)   # = capsa init --pool-node
    pool = Pool(root)
    try:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in etcd_members)
        for m in etcd_members:
            proc = EtcdProc(m, root / "etcd" / m.name, root / f"etcd-{m.name}.log",
                            _etcd_args(m, root / "etcd" / m.name, bundle / "etcd", cluster))
            proc.data.mkdir(parents=True)
            proc.start()
            pool.etcd.append(proc)
        for spec in specs:
            assert spec.home is not None
            spec.home.mkdir(parents=True, mode=0o700)
            (spec.home / "server.yaml").write_bytes((bundle / "nodes" / spec.name / "server.yaml").read_bytes())
            os.chmod(spec.home / "server.yaml", 0o600)
            for role in ("admin", "developer", "reader", "maintainer"):
                target = spec.home.parent / f"client-{role}.yaml"
                target.write_bytes((bundle / f"client-{role}.yaml").read_bytes())
            daemon = PoolDaemon(home=spec.home, port=int(spec.address.rsplit(":", 1)[1]),
                                log_path=root / f"{spec.name}-daemon.log", name=spec.name,
                                cgroup2=(cgroups or {}).get(spec.name))
            pool.nodes.append(daemon)
        wait_etcd_ready(pool)
        for daemon in pool.nodes:
            daemon.start()
        yield pool
    finally:
        pool.stop()


def foreign_etcd_cert() -> EtcdTLS:
    """A client certificate from another CA: etcd must refuse it."""
    other = create_ca("not the pool's CA")
    cert = issue_etcd_client_cert(other, name="intruder")
    return EtcdTLS(other.cert_pem, cert.cert_pem, cert.key_pem)
