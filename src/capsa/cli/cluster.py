"""Pool commands: `capsa node ls`, `capsa scheduler`, `capsa init --pool-node/--etcd`; and the pool halves of
`run --pool`, `ps --pool`, `inspect/logs/stop/rm --pool` (called from cli/jobs.py), `prune --pool` and
`workflow run/status --pool`.

Users reach the pool through any node's API; only `capsa scheduler` (an operator's process on a
node) talks to etcd, with the node's own etcd certificate.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
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
@click.option("--retention", default="7d", show_default=True, metavar="DURATION",
              help="Remove the records of pool jobs and workflows this long after they ended ('0': keep them).")
def scheduler(server_config: Path | None, name: str, strategy: str, lease_ttl: int, retention: str) -> int:
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
    from capsa.jobs.schedule import parse_duration

    retention_s = 0.0 if retention.strip() == "0" else parse_duration(retention, what="--retention")
    sched = Scheduler(etcd_client(config), name=name or f"{socket.gethostname()}:{os.getpid()}",
                      strategy=Strategy(strategy), lease_ttl_s=lease_ttl, retention_s=retention_s)
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
    from capsa.cli.run_features import _parse_secrets
    from capsa.cluster.model import parse_constraints
    from capsa.cluster.spec import REFUSED
    from capsa.errors import InvalidArgument

    if features["uploads"]:   # refused before anything is uploaded (the node refuses it too)
        raise InvalidArgument(REFUSED["--upload"])
    resources = pb.Resources(**{k: fields.pop(k) for k in ("max_cpu", "cpu_cores", "max_memory_mb", "max_iobps",
                                                         "max_pids")})
    request = pb.RunJobRequest(**fields, resources=resources, timeout=features["timeout"],
                               schedule=features["schedule"],
                               secret_env=_parse_secrets(features["secret_env"]))
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
    """The pool record, with the local job from the node that runs (or ran) it under ``local``."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.cli.jobs import job_dict

    job = pool_call(client, "GetPoolJob", cpb.GetPoolJobRequest(id=job_id, local=True))
    data = pool_job_dict(job)
    data["local"] = job_dict(job.local) if job.HasField("local") else None
    emit(data)


def pool_log_chunks(client: Any, job_id: str, *, follow: bool, from_seq: int, tail: str, since: str, until: str,
                    stream: int) -> Iterator[Any]:
    """`capsa logs --pool`: the chunks from the node that runs the job, relayed by the client's node."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.errors import InvalidArgument

    for flag, given in (("--tail", tail != "all"), ("--since", bool(since)), ("--until", bool(until))):
        if given:   # the node-to-node relay carries whole logs from a sequence number, not selections
            raise InvalidArgument(f"{flag} is not supported with --pool: use --from-seq, or `capsa logs {flag}` on"
                                  " the node that runs the job (`capsa inspect --pool` names it)")
    for chunk in pool_call(client, "PoolLogs", cpb.PoolLogsRequest(id=job_id, follow=follow, from_seq=from_seq),
                           timeout=None if follow else -1.0):
        if not stream or chunk.stream == stream:
            yield chunk


def is_pool_job(client: Any, job_id: str) -> bool:
    """Whether ``job_id`` names a pool job, as seen from the client's node (False on a node outside a pool)."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.errors import CapsaError

    try:
        pool_call(client, "GetPoolJob", cpb.GetPoolJobRequest(id=job_id))
    except CapsaError:   # not in a pool, no such pool job, not a pool job id, or not allowed
        return False
    return True


def local_or_pool_chunks(client: Any, job_id: str, local: Iterator[Any], **pool_args: Any) -> Iterator[Any]:
    """`capsa logs JOB`: the local job's chunks; if this node has no such job but the pool does, the pool job's
    (from the node that runs it), as with --pool."""
    from capsa.errors import NotFound

    try:
        first = next(local)
    except StopIteration:
        return
    except NotFound:
        if not is_pool_job(client, job_id):
            raise
        yield from pool_log_chunks(client, job_id, **pool_args)
        return
    yield first
    yield from local


def rm_pool(client: Any, job_ids: tuple[str, ...], *, force: bool) -> list[str]:
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    return list(pool_call(client, "RemovePoolJobs", cpb.RemovePoolJobsRequest(ids=list(job_ids), force=force),
                          timeout=None).removed)


def prune_pool_command(client: Any, *, older_than: str, filters: tuple[str, ...], force: bool, dry_run: bool,
                       as_json: bool) -> None:
    """`capsa prune --pool`: the records of ended pool jobs and workflows (the scheduler's retention does this too)."""
    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb
    from capsa.jobs.schedule import parse_duration

    if filters:
        raise click.UsageError("--filter is not supported with --pool: every ended pool job is pruned")
    older_than_s = parse_duration(older_than, what="--older-than") if older_than else 0.0

    def call(dry: bool) -> Any:
        return pool_call(client, "PrunePool", cpb.PrunePoolRequest(older_than_seconds=older_than_s, dry_run=dry))

    if not force and not dry_run:
        preview = call(True)
        what = f"{len(preview.job_ids)} pool job record(s) and {len(preview.workflow_ids)} pool workflow record(s)"
        if not sys.stdin.isatty():
            raise click.UsageError(f"would remove {what}; pass -f to do it without a prompt")
        click.confirm(f"remove {what}?", abort=True)
    result = call(dry_run)
    if as_json:
        emit({"job_ids": list(result.job_ids), "workflow_ids": list(result.workflow_ids), "dry_run": dry_run})
        return
    for job_id in result.job_ids:
        click.echo(job_id[:12])
    click.echo(f"{len(result.job_ids)} pool job(s), {len(result.workflow_ids)} pool workflow(s)"
               f" {'would be ' if dry_run else ''}removed")


def workflow_status_pool(client: Any, workflow_id: str, *, as_json: bool) -> None:
    from google.protobuf.json_format import MessageToDict

    from capsa.api.gen.capsa.v1 import cluster_pb2 as cpb

    wf = pool_call(client, "GetPoolWorkflow", cpb.GetPoolWorkflowRequest(id=workflow_id))
    if as_json:
        emit(MessageToDict(wf, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
        return
    click.echo(f"pool workflow {wf.id} ({wf.name}): {wf.state}")
    print_table(["JOB", "STATE", "NODE", "JOB ID", "REASON"],
                [(j.name, j.state, j.node or "-", j.job_id[:12] or "-", j.reason) for j in wf.jobs])


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
