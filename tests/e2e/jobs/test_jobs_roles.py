"""Every RPC of every service, called with each of the four role configs of the daemon's home:
allowed exactly when the caller's role is at least the one the role table requires."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from jobs_helpers import wait_ended

import capsa.api.gen
from capsa.api.roles import RPC_ROLES
from capsa.config import load_client_config
from tests.fixtures.daemon import RunningDaemon

RANK = {"reader": 0, "developer": 1, "maintainer": 2, "admin": 3}   # "node" RPCs: refused for all four
ROLES = list(RANK)


def _services() -> list[ServiceDescriptor]:
    found: dict[str, ServiceDescriptor] = {}
    for info in pkgutil.walk_packages(capsa.api.gen.__path__, "capsa.api.gen."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            for service in module.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return [found[name] for name in sorted(found)]


SERVICES = _services()


def _channel(daemon: RunningDaemon, role: str) -> grpc.Channel:
    node = load_client_config(daemon.home / f"client-{role}.yaml").select(None)
    creds = grpc.ssl_channel_credentials(root_certificates=node.ca_pem.encode(), private_key=node.key_pem.encode(),
                                         certificate_chain=node.cert_pem.encode())
    return grpc.secure_channel(node.address, creds)


def _request(method: MethodDescriptor, job_id: str) -> Any:
    message = GetMessageClass(method.input_type)()
    fields = method.input_type.fields_by_name
    if "id" in fields and fields["id"].type == fields["id"].TYPE_STRING:
        message.id = job_id
    if "command" in fields:
        message.command.append("/bin/true")
    return message


def _call(channel: grpc.Channel, method: MethodDescriptor, request: Any) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_type = GetMessageClass(method.output_type)
    kwargs = {"request_serializer": type(request).SerializeToString, "response_deserializer": response_type.FromString}
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kwargs)(iter([request]), timeout=30))
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter([request]), timeout=30)
        elif method.server_streaming:
            list(channel.unary_stream(path, **kwargs)(request, timeout=30))
        else:
            channel.unary_unary(path, **kwargs)(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _order(service: ServiceDescriptor) -> list[MethodDescriptor]:
    # Destructive calls last, so the other calls of a role see the job they are given.
    return sorted(service.methods, key=lambda m: (m.name.startswith(("Delete", "Remove", "Prune")), m.name))


@pytest.fixture
def fresh_job(daemon: RunningDaemon) -> Iterator[str]:
    with daemon.client() as client:
        job = client.run_job(["/bin/true"])
        wait_ended(client, job.id)
    yield job.id


@pytest.mark.parametrize("service", SERVICES, ids=[s.full_name for s in SERVICES])
@pytest.mark.parametrize("role", ROLES)
def test_every_rpc_is_allowed_exactly_for_sufficient_roles(daemon: RunningDaemon, service: ServiceDescriptor,
                                                           role: str, fresh_job: str) -> None:
    outcomes: dict[str, grpc.StatusCode] = {}
    with _channel(daemon, role) as channel:
        for method in _order(service):
            outcomes[method.name] = _call(channel, method, _request(method, fresh_job))
    if all(code == grpc.StatusCode.UNIMPLEMENTED for code in outcomes.values()):
        pytest.skip(f"{service.full_name} is not served by the daemon yet")
    for method in service.methods:
        needed = RPC_ROLES[f"/{service.full_name}/{method.name}"]
        code = outcomes[method.name]
        if needed.value in RANK and RANK[role] >= RANK[needed.value]:
            # Allowed: the call reaches the servicer (a domain error such as NOT_FOUND is fine, a bug is not).
            assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
                f"{role} was refused {method.name}: {code}"
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, f"{role} may not call {method.name}, got {code}"


def test_refused_calls_change_nothing(daemon: RunningDaemon, fresh_job: str) -> None:
    with daemon.client() as admin:
        before = sorted(j.id for j in admin.list_jobs(all=True))
    with _channel(daemon, "reader") as channel:
        service = next(s for s in SERVICES if s.name == "JobService")
        for name in ("RunJob", "StopJob", "DeleteJob"):
            method = service.methods_by_name[name]
            assert _call(channel, method, _request(method, fresh_job)) == grpc.StatusCode.PERMISSION_DENIED
    with daemon.client() as admin:
        assert sorted(j.id for j in admin.list_jobs(all=True)) == before


@pytest.mark.parametrize("role", ROLES)
def test_each_role_config_carries_its_role(daemon: RunningDaemon, role: str) -> None:
    with daemon.client(role) as client:
        assert client.whoami().role == role
