"""Pool commands: `capsa node ls`, `capsa scheduler`, `capsa init --pool-node/--etcd`; and the pool halves of
`run --pool`, `ps --pool`, `inspect/logs/stop --pool` (called from cli/jobs.py).

Users reach the pool through any node's API; only `capsa scheduler` (an operator's process on a
node) talks to etcd, with the node's own etcd certificate.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import click

from capsa.cli.output import ago, emit, json_option, key_values, print_table

__all__ = ["COMMANDS", "pool_call", "pool_job_dict"]


def pool_call(client: Any, method: str, request: Any, *, timeout: float | None = -1.0) -> Any:
    """Call ClusterService.<method> on the client's node, typed errors out."""
    from capsa.api.gen.capsa.v1 import cluster_pb2_grpc as cpb_grpc

    stub = cpb_grpc.ClusterServiceStub(client.channel)
    return client._call(getattr(stub, method), request, timeout=timeout)


def pool_job_dict(job: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data["exit_code"] = job.exit_code if job.ended else None
    for key in ("submitted_at_ns", "placed_at_ns", "started_at_ns", "ended_at_ns"):
        data[key] = int(data.get(key, 0))
    return data


@click.group()
def node() -> None:
    """The nodes of the pool."""


@node.command("ls")
@json_option
@click.pass_obj
def node_ls(obj: Any, as_json: bool) -> None:
    """List pool nodes: READY ones and LOST ones (their lease expired)."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    nodes = pool_call(obj.client(), "ListNodes", cpb.ListNodesRequest()).nodes
    if as_json:
        from google.protobuf.json_format import MessageToDict

        emit([MessageToDict(n, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
              for n in nodes])
        return
    print_table(["NAME", "STATE", "ADDRESS", "CPUS", "MEMORY", "GPUS", "JOBS", "LABELS"],
                [(n.name, n.state, n.address or "-", n.cpus, f"{n.memory_mb} MB", n.gpus, f"{n.jobs}/{n.max_jobs}",
                  ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-") for n in nodes])


@click.command()
@click.option("--server-config", type=click.Path(path_type=Path, exists=True), default=None,
              help="A node's server.yaml whose cluster section names etcd (default $CAPSA_HOME/server.yaml).")
@click.option("--name", default="", help="This scheduler's name in the election (default host:pid).")
@click.option("--strategy", type=click.Choice(["spread", "binpack"]), default="spread", show_default=True)
@click.option("--lease-ttl", type=click.IntRange(2, 60), default=3, show_default=True,
              help="Seconds without renewal after which a stand-by takes over.")
def scheduler(server_config: Path | None, name: str, strategy: str, lease_ttl: int) -> int:
    """Run a pool scheduler: one leader places jobs, the others stand by (run one or more)."""
    import logging
    import os
    import signal
    import socket

    from capsa.cluster import etcd_client
    from capsa.cluster.placement import Strategy
    from capsa.cluster.scheduler import Scheduler
    from capsa.config import capsa_home, load_server_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_server_config(server_config or capsa_home() / "server.yaml")
    sched = Scheduler(etcd_client(config), name=name or f"{socket.gethostname()}:{os.getpid()}",
                      strategy=Strategy(strategy), lease_ttl_s=lease_ttl)
    signal.signal(signal.SIGTERM, lambda *_: sched.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: sched.stop_event.set())
    runner = threading.Thread(target=sched.run, name="scheduler")
    runner.start()
    print(f"capsa scheduler {sched.name} started", flush=True)
    while runner.is_alive():
        runner.join(0.5)
    return 0


def init_pool(directory: Path, nodes: tuple[str, ...], members: tuple[str, ...], *, force: bool) -> list[Path]:
    """`capsa init --pool-node ... --etcd ...`: a CA and every certificate and config of a pool."""
    from capsa.cluster.bundle import EtcdMember, PoolNodeSpec, write_cluster_bundle
    from capsa.errors import InvalidArgument

    if not nodes or not members:
        raise InvalidArgument("a pool needs at least one --pool-node and one --etcd")
    specs = []
    for item in nodes:
        name, _, rest = item.partition("=")
        address, *labels = rest.split(",")
        if not name or not address:
            raise InvalidArgument(f"--pool-node {item!r}: expected NAME=HOST:PORT[,LABEL=VALUE...]")
        specs.append(PoolNodeSpec(name=name, address=address, labels=key_values(labels, "--pool-node label")))
    etcd = []
    for item in members:
        name, _, rest = item.partition("=")
        parts = rest.rsplit(":", 2)
        if not name or len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise InvalidArgument(f"--etcd {item!r}: expected NAME=HOST:CLIENT_PORT:PEER_PORT")
        etcd.append(EtcdMember(name=name, host=parts[0], client_port=int(parts[1]), peer_port=int(parts[2])))
    return write_cluster_bundle(directory, nodes=specs, etcd=etcd, overwrite=force)


# -- the pool halves of the job commands ------------------------------------------------------------
def run_on_pool(client: Any, fields: dict[str, Any], features: dict[str, Any], *, constraints: tuple[str, ...],
                restart: str, detach: bool, as_json: bool) -> int:
    """`capsa run --pool`: submit through the client's node, then (attached) stream the output from
    whichever node runs it and exit with the job's code."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
    from capsa.cluster.model import parse_constraints
    from capsa.errors import InvalidArgument

    if features["uploads"] or features["secret_env"]:
        raise InvalidArgument("--upload and --secret-env are not supported with --pool")
    resources = pb.Resources(**{k: fields.pop(k) for k in ("max_cpu", "cpu_cores", "max_memory_mb", "max_iobps",
                                                         "max_pids")})
    request = pb.RunJobRequest(**fields, resources=resources, timeout=features["timeout"],
                               schedule=features["schedule"])
    job = pool_call(client, "SubmitPoolJob", cpb.SubmitPoolJobRequest(
        job=request, constraints=parse_constraints(constraints), restart=restart))
    if detach:
        if as_json:
            emit(pool_job_dict(job))
        else:
            click.echo(job.id)
        return 0
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for chunk in pool_call(client, "PoolLogs", cpb.PoolLogsRequest(id=job.id, follow=True), timeout=None):
        (out if chunk.stream == 1 else err).write(chunk.data)
    out.flush()
    final = pool_call(client, "GetPoolJob", cpb.GetPoolJobRequest(id=job.id))
    while not final.ended:
        import time

        time.sleep(0.1)
        final = pool_call(client, "GetPoolJob", cpb.GetPoolJobRequest(id=job.id))
    if as_json:
        emit(pool_job_dict(final))
    if final.state != "COMPLETED" and final.reason:
        click.echo(f"capsa: pool job {final.id[:12]}: {final.state}: {final.reason}", err=True)
    return final.exit_code if final.state in ("COMPLETED", "FAILED") else 1


def ps_pool(client: Any, *, all_: bool, quiet: bool, as_json: bool) -> None:
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    jobs = pool_call(client, "ListPoolJobs", cpb.ListPoolJobsRequest(all=all_)).jobs
    if as_json:
        emit([pool_job_dict(j) for j in jobs])
    elif quiet:
        for j in jobs:
            click.echo(j.id[:12])
    else:
        print_table(["JOB ID", "STATE", "NODE", "EXIT", "SUBMITTED", "COMMAND", "ATTEMPT"],
                    [(j.id[:12], j.state, j.node or "-", j.exit_code if j.ended else "-", ago(j.submitted_at_ns),
                      " ".join(j.command)[:60], j.attempt) for j in jobs])


def inspect_pool(client: Any, job_id: str) -> None:
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    emit(pool_job_dict(pool_call(client, "GetPoolJob", cpb.GetPoolJobRequest(id=job_id))))


def logs_pool(client: Any, job_id: str, *, follow: bool, from_seq: int) -> None:
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    out, err = sys.stdout.buffer, sys.stderr.buffer
    for chunk in pool_call(client, "PoolLogs", cpb.PoolLogsRequest(id=job_id, follow=follow, from_seq=from_seq),
                           timeout=None if follow else -1.0):
        target = out if chunk.stream == 1 else err
        target.write(chunk.data)
        target.flush()


def stop_pool(client: Any, job_ids: tuple[str, ...], grace: float, *, as_json: bool) -> None:
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    stopped = [pool_call(client, "StopPoolJob", cpb.StopPoolJobRequest(id=j, grace_seconds=grace), timeout=None)
               for j in job_ids]
    if as_json:
        emit([pool_job_dict(j) for j in stopped])
    else:
        for job in stopped:
            click.echo(job.id[:12])


def run_workflow_on_pool(client: Any, text: str, *, base_dir: str, constraints: tuple[str, ...], wait: bool,
                         as_json: bool) -> int:
    import time

    from google.protobuf.json_format import MessageToDict

    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.cluster.model import parse_constraints

    wf = pool_call(client, "SubmitPoolWorkflow", cpb.SubmitPoolWorkflowRequest(
        yaml=text, base_dir=base_dir, constraints=parse_constraints(constraints)))
    while wait and wf.state == "RUNNING":
        time.sleep(0.2)
        wf = pool_call(client, "GetPoolWorkflow", cpb.GetPoolWorkflowRequest(id=wf.id))
    if as_json:
        emit(MessageToDict(wf, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
    else:
        click.echo(wf.id)
        for job in wf.jobs:
            click.echo(f"  {job.name}: {job.state} on {job.node or '-'}" + (f" ({job.reason})" if job.reason else ""),
                       err=True)
    return 0 if not wait or wf.state == "COMPLETED" else 1


COMMANDS = [node, scheduler]
