"""The role table covers every RPC of every generated service, and nothing else."""

from __future__ import annotations

import importlib
import pkgutil

import capsa.api.gen
from capsa.api.roles import RPC_ROLES, required_role
from capsa.pki import NodeRole, Role


def _all_rpcs() -> set[str]:
    methods: set[str] = set()
    for info in pkgutil.walk_packages(capsa.api.gen.__path__, "capsa.api.gen."):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return methods


def test_the_generated_code_has_services() -> None:
    rpcs = _all_rpcs()
    assert "/capsa.v1.JobService/RunJob" in rpcs and "/capsa.v1.NodeService/WhoAmI" in rpcs


def test_every_rpc_is_in_the_role_table() -> None:
    missing = sorted(_all_rpcs() - RPC_ROLES.keys())
    assert not missing, f"RPCs with no role (refused for everyone): {missing}"


def test_the_role_table_names_only_existing_rpcs() -> None:
    stale = sorted(RPC_ROLES.keys() - _all_rpcs())
    assert not stale, f"role table entries for RPCs that do not exist: {stale}"


def test_every_entry_is_a_role() -> None:
    assert all(isinstance(role, Role | NodeRole) for role in RPC_ROLES.values())


def test_only_node_to_node_rpcs_need_the_node_role_and_no_user_role_reaches_them() -> None:
    node_only = {m for m, r in RPC_ROLES.items() if r is NodeRole.NODE}
    assert node_only == {"/capsa.v1.ClusterService/NodeStopJob", "/capsa.v1.ClusterService/NodeLogs",
                         "/capsa.v1.ClusterService/NodeGetJob"}
    assert not any(Role.ADMIN.allows(RPC_ROLES[m]) for m in node_only)
    assert not any(NodeRole.NODE.allows(r) for m, r in RPC_ROLES.items() if m not in node_only)


def test_job_rpcs_follow_the_documented_split() -> None:
    # reader: list, inspect, logs; developer: + run, stop, delete jobs (issue 2, item 3).
    expected = {
        "RunJob": Role.DEVELOPER, "StopJob": Role.DEVELOPER, "DeleteJob": Role.DEVELOPER,
        "GetJob": Role.READER, "ListJobs": Role.READER, "StreamLogs": Role.READER,
    }
    for name, role in expected.items():
        assert RPC_ROLES[f"/capsa.v1.JobService/{name}"] is role, name


def test_an_unknown_method_has_no_role() -> None:
    assert required_role("/capsa.v1.JobService/NoSuchMethod") is None
