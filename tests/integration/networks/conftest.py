"""A NetworkManager on the real kernel, with its own names, torn down and checked after each test.

Every test gets a fresh database (so a fresh instance id), its own netns
directory under ``tmp_path``, its own chain prefix, bridge name and address
ranges, so it cannot touch a capsa daemon (or another test) running on the
same host. The finalizer detaches what is left, calls ``teardown()`` and then
*lists* the kernel state to prove nothing of this instance survived: no netns
mount, no interface with the instance's alias or the test's bridge name, no
chain, and ip_forward back to what it was.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from networks_helpers import Leftovers, leftovers

from capsa.networks import NetworkConfig, NetworkManager
from capsa.networks import _firewall as firewall
from capsa.networks import _links as links
from capsa.state import Database

_MISSING = [tool for tool in ("iptables", "iptables-restore", "nsenter", "ip") if shutil.which(tool) is None]


def _kernel_reason() -> str | None:
    if _MISSING:
        return f"needs {', '.join(_MISSING)}"
    probe = subprocess.run(["ip", "link", "add", "capvprobe0", "type", "veth", "peer", "name", "capvprobe1"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the kernel cannot create veth pairs: {probe.stderr.strip()}"
    subprocess.run(["ip", "link", "del", "capvprobe0"], capture_output=True)
    return None


_REASON = _kernel_reason()


@pytest.fixture
def net_config(tmp_path: Path) -> NetworkConfig:
    if _REASON:
        pytest.skip(_REASON)
    suffix = secrets.token_hex(3)
    # 10.233/10.234/10.235: away from capsa's defaults (10.203/10.204) a real daemon may use.
    return NetworkConfig(
        netns_dir=tmp_path / "netns",
        isolated_pool="10.233.0.0/24",
        bridge_cidr="10.234.0.0/24",
        bridge_name=f"ctb{suffix}",
        chain_prefix=f"CT{suffix.upper()}",
    )


@pytest.fixture
def manager(tmp_path: Path, net_config: NetworkConfig) -> Iterator[NetworkManager]:
    before = firewall.read_ip_forward()
    db = Database(tmp_path / "capsa.db")
    mgr = NetworkManager(db, config=net_config)
    try:
        yield mgr
    finally:
        for att in mgr.attachments():
            mgr.detach(att.job_id)
        for net in mgr.list():
            if not net.builtin:
                mgr.remove(net.name)
        assert mgr.teardown(), "teardown refused although every job was detached"
        found: Leftovers = leftovers(mgr, tmp_path)
        db.close()
        assert found.empty(), f"left behind: {found}"
        # Another capsa instance on the host may legitimately keep forwarding on.
        others = links.owned_links("capsa:")
        assert firewall.read_ip_forward() == before or others, "ip_forward not restored"
