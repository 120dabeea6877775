"""Many nodes as one pool, coordinated through etcd (ADR 0012, docs/cluster.md).

- :mod:`.etcd` — a small typed etcd v3 client over the JSON gateway (mutual TLS, endpoint failover)
- :mod:`.model` — the key layout and the versioned records (nodes, jobs, assignments, workflows)
- :mod:`.placement` — filter and score, pure functions
- :mod:`.scheduler` — ``capsa scheduler``: leader election, binding transactions, LOST detection
- :mod:`.node` — a daemon's membership, its assignments, fencing
- :mod:`.pool` — what the API serves (any node), with :mod:`.proxy` to reach the owning node
- :mod:`.sealing` — ``--secret-env`` sealed to each node's certificate (never in etcd in clear)
- :mod:`.retention` — removing the records of ended jobs and workflows (rm/prune --pool, the leader's sweep)
- :mod:`.bundle` — certificates and configs for a cluster (``capsa init --pool-node ... --etcd ...``)

``ClusterComponent`` is what the daemon composition root starts after jobs and stops before them.
"""

from __future__ import annotations

import os
from typing import Any

from capsa.cluster.etcd import EtcdClient, EtcdTLS
from capsa.cluster.node import Inventory, PoolNode, memory_mb
from capsa.cluster.pool import Pool
from capsa.cluster.proxy import NodeDialer
from capsa.config.server import ServerConfig
from capsa.errors import FailedPrecondition

__all__ = ["ClusterComponent", "etcd_client"]


def etcd_client(config: ServerConfig) -> EtcdClient:
    cluster = config.cluster
    if cluster is None:
        raise FailedPrecondition("server.yaml has no cluster section")
    tls = None
    if cluster.etcd_tls is not None:
        tls = EtcdTLS(ca_pem=config.tls.ca_pem, cert_pem=cluster.etcd_tls.cert_pem, key_pem=cluster.etcd_tls.key_pem)
    return EtcdClient(cluster.etcd, tls=tls)


class ClusterComponent:
    """The daemon's membership of the pool; ``pool`` is what ClusterServicer serves."""

    def __init__(self, config: ServerConfig, *, jobs: Any, images: Any, capsule_store: Any, gpus: Any,
                 listen: str) -> None:
        cluster = config.cluster
        if cluster is None:
            raise FailedPrecondition("this daemon is not part of a pool (no cluster section in server.yaml)")
        self.etcd = etcd_client(config)

        def inventory() -> Inventory:
            return Inventory(cpus=len(os.sched_getaffinity(0)), memory_mb=memory_mb(),
                             gpus=len(gpus.inventory()) if gpus is not None else 0,
                             images=[i.ref for i in images.list()] if images is not None else [],
                             capsules=[f"{c.name}@{c.version}" for c in capsule_store.list()]
                             if capsule_store is not None else [])

        self.node = PoolNode(self.etcd, jobs, name=cluster.node_name, address=cluster.advertise or listen,
                             labels=dict(cluster.labels), snapshotter=config.snapshots.backend,
                             lease_ttl_s=cluster.lease_ttl_s, max_jobs=cluster.max_jobs, inventory=inventory,
                             cert_pem=cluster.node_tls.cert_pem if cluster.node_tls else "",
                             key_pem=cluster.node_tls.key_pem if cluster.node_tls else "")
        node_tls = cluster.node_tls
        self.dialer = NodeDialer(ca_pem=config.tls.ca_pem, cert_pem=node_tls.cert_pem if node_tls else "",
                                 key_pem=node_tls.key_pem if node_tls else "")
        self.pool = Pool(self.etcd, self.node, self.dialer, ca_pem=config.tls.ca_pem)

    def start(self) -> None:
        self.node.start()

    def close(self) -> None:
        self.node.stop()
        self.dialer.close()
        self.etcd.close()
