"""Network modes for jobs: host, none, isolated, bridge, and named networks.

Usage (daemon side, see docs/networking.md for the whole life of a job)::

    nets = NetworkManager(db, config=NetworkConfig(netns_dir=Path("/run/capsa/netns")))
    att = nets.attach(job_id, "isolated")      # before launch; att.netns_path is None for "host"
    ...  # stage one: setns(open(att.netns_path), CLONE_NEWNET), then unshare the rest
    nets.detach(job_id)                        # after the job exited
    nets.reconcile(running_job_ids)            # once, after a daemon restart
"""

from capsa.networks.manager import NetworkManager
from capsa.networks.model import (
    BUILTIN_MODES,
    Attachment,
    NetStats,
    Network,
    NetworkConfig,
    ReconcileReport,
    validate_network_name,
)

__all__ = [
    "BUILTIN_MODES",
    "Attachment",
    "NetStats",
    "Network",
    "NetworkConfig",
    "NetworkManager",
    "ReconcileReport",
    "validate_network_name",
]
