"""Job commands: run, ps, inspect, logs, stop, rm."""

from __future__ import annotations

import base64
import signal
import sys
from typing import Any

import click

from capsa.cli.completion import complete_capsules, complete_images, complete_jobs
from capsa.cli.output import ago, emit, json_option, key_values, print_table, truncate
from capsa.cli.protojson import message_dict
from capsa.cli.run_features import announce_scheduled, feature_options, feature_request, timeout_exit
from capsa.errors import InvalidArgument, NotFound

__all__ = ["COMMANDS"]


def job_dict(job: Any) -> dict[str, Any]:
    data = message_dict(job)
    data["exit_code"] = job.exit_code if job.ended else None
    for key in ("created_at_ns", "started_at_ns", "ended_at_ns", "start_latency_ns", "scheduled_at_ns",
                "next_restart_at_ns", "log_dropped_bytes"):
        data[key] = int(data.get(key, 0))
    # protobuf's JSON mapping writes 64-bit integers as strings; scripts expect numbers
    resources = data.get("resources") or {}
    for key in ("max_memory_mb", "max_iobps"):
        if key in resources:
            resources[key] = int(resources[key])
    return data


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    return key_values(pairs, "-e")


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the job id.")
@click.option("-i", "--interactive", is_flag=True,
              help="Stream stdin to the job (its EOF is the job's); `capsa attach` reconnects.")
@click.option("-t", "--tty", is_flag=True,
              help="Give the job a pseudo-terminal (with -i: this terminal in raw mode; detach: Ctrl-P Ctrl-Q).")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="With -it: the keys that detach, leaving the job running (e.g. ctrl-a,d; '' for none).")
@click.option("--name", default="", help="A unique name, usable wherever a job id is ([A-Za-z0-9][A-Za-z0-9_.-]{0,63}).")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label the job (repeatable).")
@click.option("--rm", "auto_remove", is_flag=True,
              help="Remove the job, its logs and files once it ends (done by the daemon, even if detached).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("--workdir", default="", help="Working directory inside the job (default /work).")
@click.option("--max-cpu", type=int, default=0, help="CPU limit in percent of one core (100 = one core).")
@click.option("--cpu-cores", default="", help="CPUs the job may use, e.g. 0-1 or 0,2.")
@click.option("--max-memory", type=int, default=0, help="Memory limit in MB; the job is OOM-killed above it.")
@click.option("--max-iobps", type=int, default=0, help="I/O limit in bytes/s on the device backing the job.")
@click.option("--max-pids", type=int, default=0, help="Maximum number of processes in the job.")
@click.option("--image", default="", shell_complete=complete_images, help="Run in this image (registry ref, s3://..., oci:PATH, docker-archive:PATH).")
@click.option("--pull", type=click.Choice(["missing", "always", "never"]), default="missing", show_default=True,
              help="When to pull --image.")
@click.option("--runtime", default="", metavar="NAME[@VERSION]",
              help="Run in this runtime only, no host files (`capsa runtime ls`; NAME alone: its newest build).")
@click.option("-u", "--user", default="", help="UID[:GID] to run as (default: the image's User, else root).")
@click.option("--seccomp", type=click.Choice(["default", "strict", "unconfined"]), default="default",
              show_default=True, help="Syscall filter profile (docs/security.md).")
@click.option("--network", default="host", show_default=True,
              help="host | none | isolated | bridge | a network from `capsa network ls`.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="NAME[:/path][:ro]",
              help="Mount a volume (default path /volumes/NAME); repeatable.")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[HOSTIP:]HOSTPORT:JOBPORT[/tcp|/udp]",
              help="Publish a job port on the host (bridge, isolated or named networks); HOSTIP defaults to"
                   " 127.0.0.1 (only this host can connect), ask for 0.0.0.0 to expose it; repeatable.")
@click.option("--capsule", "capsules", multiple=True, shell_complete=complete_capsules, metavar="NAME@SPEC[:PATH]",
              help="Mount a capsule read-only (default /capsules/NAME) with its dependencies; repeatable.")
@click.option("--gpus", type=click.IntRange(min=0), default=0,
              help="Whole NVIDIA GPUs for the job, exclusively (docs/gpu.md); fails if not enough are free.")
@click.option("--restart", default="no", metavar="no|on-failure[:N]|always",
              help="Restart the job when it ends (backoff 0.1s doubling to 30s); `capsa stop` ends the policy."
                   " With --pool (no|on-failure|always): place the job again when it fails or its node is lost.")
@click.option("--log-max-size", default="", metavar="SIZE",
              help="Keep at most about SIZE (10M, 512KiB) of the newest output; `inspect` shows what was dropped.")
@feature_options
@click.option("--pool", is_flag=True, help="Run on whichever node of the pool the scheduler picks (docs/cluster.md).")
@click.option("--constraint", "constraints", multiple=True, metavar="LABEL=VALUE",
              help="With --pool: only on nodes with this label (repeatable).")
@json_option
@click.argument("command", nargs=-1, required=False)
@click.pass_obj
def run(obj: Any, detach: bool, interactive: bool, tty: bool, detach_keys: str, name: str, labels: tuple[str, ...], auto_remove: bool, env: tuple[str, ...], workdir: str, max_cpu: int, cpu_cores: str,
        max_memory: int, max_iobps: int, max_pids: int, image: str, pull: str, runtime: str, user: str,
        seccomp: str, network: str, volumes: tuple[str, ...], ports: tuple[str, ...], capsules: tuple[str, ...],
        gpus: int, restart: str, log_max_size: str, pool: bool, constraints: tuple[str, ...],
        as_json: bool, command: tuple[str, ...], **features: Any) -> int:
    """Run COMMAND as an isolated job (attached unless -d): capsa run [flags] -- CMD ARGS."""
    if not command and not image and not runtime:
        raise InvalidArgument("no command given: use `capsa run [flags] -- COMMAND [ARGS...]`")
    client = obj.client()
    if pool and (interactive or tty):
        raise InvalidArgument("-i and -t cannot be used with --pool: attach to a job on this node")
    if pool:
        if ports:   # a published port belongs to one node's firewall; the pool picks the node later
            raise InvalidArgument("-p cannot be used with --pool: ports are published on the node that runs the job")
        from capsa.cli.cluster import run_on_pool

        if restart not in ("no", "on-failure", "always"):
            raise click.UsageError("with --pool, --restart is one of no, on-failure, always")
        return run_on_pool(client, dict(command=list(command), env=_parse_env(env), workdir=workdir, name=name,
                                        image=image, pull=pull, runtime=runtime, user=user, seccomp=seccomp,
                                        network=network, volumes=list(volumes), capsules=list(capsules), gpus=gpus,
                                        max_cpu=max_cpu, cpu_cores=cpu_cores, max_memory_mb=max_memory,
                                        max_iobps=max_iobps, max_pids=max_pids, log_max_size=log_max_size,
                                        labels=key_values(labels, "--label"), auto_remove=auto_remove),
                           features, constraints=constraints, restart=restart, detach=detach, as_json=as_json)
    extra = feature_request(client, features)
    if interactive or tty:
        from capsa.cli.terminal import parse_detach_keys, terminal_size

        keys = parse_detach_keys(detach_keys)   # checked before the job exists
        if tty and interactive and not sys.stdin.isatty():
            raise InvalidArgument("the input device is not a terminal: drop -t, or run from a terminal")
        extra.update(stdin=interactive, tty=tty, tty_size=terminal_size(sys.stdin.fileno()) if tty else (0, 0))
    job = client.run_job(list(command), env=_parse_env(env), workdir=workdir, name=name, max_cpu=max_cpu,
                         cpu_cores=cpu_cores, max_memory_mb=max_memory, max_iobps=max_iobps, max_pids=max_pids,
                         image=image, pull=pull, runtime=runtime, user=user, seccomp=seccomp, network=network,
                         volumes=list(volumes), capsules=list(capsules), gpus=gpus, ports=list(ports),
                         restart="" if restart == "no" else restart, log_max_size=log_max_size,
                         labels=key_values(labels, "--label"), auto_remove=auto_remove, **extra)
    if job.ended and job.reason.startswith("start failed"):
        click.echo(f"capsa: job {job.id[:12]}: {job.reason}", err=True)
        return job.exit_code or 127
    if job.state == "SCHEDULED":
        return announce_scheduled(job, as_json, job_dict)
    if detach:
        if as_json:
            emit(job_dict(job))
        else:
            click.echo(job.id)
        return 0
    if interactive or tty:
        from capsa.cli.interactive import attached

        return attached(client, job.id, from_start=True, stdin=interactive, detach_keys=keys,
                        stop_on_interrupt=True)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    final = None
    try:
        # final_job: the ended job comes on the stream itself, as an --rm job is gone right after it.
        for chunk in client.stream_logs(job.id, follow=True, final_job=True):
            if chunk.HasField("job"):
                final = chunk.job
                continue
            target = out if chunk.stream == 1 else err
            target.write(chunk.data)
            target.flush()
    except KeyboardInterrupt:
        client.stop_job(job.id)
        return 128 + signal.SIGINT
    if final is None:
        final = client.get_job(job.id)
    if as_json:
        emit(job_dict(final))
    timed_out = timeout_exit(final)
    if timed_out is not None:
        return timed_out
    if final.signal:
        click.echo(f"capsa: job {final.id[:12]}: {final.reason}", err=True)
    return final.exit_code


FORMAT_FIELDS = ("id", "name", "state", "exit_code", "reason", "command", "image", "created", "created_at_ns",
                 "started_at_ns", "ended_at_ns", "labels", "workflow_id", "workflow_job", "pid", "hostname")
PS_DEFAULT_LAST = 1000   # `ps -a` shows this many newest jobs unless --last says otherwise


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show ended jobs too (the newest 1,000 unless --last).")
@click.option("-n", "--last", type=click.IntRange(min=0), default=None,
              help="Show only the newest N jobs; 0 shows every job.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only jobs matching (repeatable, all must hold): state=, label=KEY or label=KEY=VALUE, name=,"
                   " image=, workflow=ID, since=10m or RFC 3339.")
@click.option("--format", "fmt", default="", metavar="TEMPLATE",
              help="One line per job from fields, e.g. '{id} {state} {exit_code}' (fields: "
                   + ", ".join(FORMAT_FIELDS) + ").")
@click.option("--no-trunc", is_flag=True, help="Full ids and commands.")
@click.option("-q", "--quiet", is_flag=True, help="Print job ids only.")
@click.option("--pool", is_flag=True, help="List the pool's jobs, on every node.")
@json_option
@click.pass_obj
def ps(obj: Any, all_: bool, last: int | None, filters: tuple[str, ...], fmt: str, no_trunc: bool, quiet: bool,
       pool: bool, as_json: bool) -> None:
    """List jobs (running ones unless -a)."""
    if pool:
        from capsa.cli.cluster import ps_pool

        return ps_pool(obj.client(), all_=all_, quiet=quiet, as_json=as_json)
    template = check_format(fmt) if fmt else ""
    request: dict[str, Any] = {}
    if filters:   # (the plain `ps` does without the selectors module)
        from capsa.selectors import parse_filters

        wanted = parse_filters(filters)   # checked here too, so a typo fails before any round trip
        request = {"states": list(wanted.states), "names": list(wanted.names), "images": list(wanted.images),
                   "workflows": list(wanted.workflows), "since_ns": wanted.since_ns,
                   "labels": [k if v is None else f"{k}={v}" for k, v in wanted.labels]}
    client = obj.client()
    if last is None and all_:
        page = client.list_jobs_page(all=True, limit=PS_DEFAULT_LAST, filters=request)
        jobs = list(page.jobs)[:PS_DEFAULT_LAST]
        if page.next_page_token:
            click.echo(f"capsa: showing the newest {PS_DEFAULT_LAST} jobs; --last 0 shows every job", err=True)
    else:
        jobs = client.list_jobs(all=all_, limit=last or 0, filters=request)
    if as_json:
        emit([job_dict(j) for j in jobs])
    elif quiet:
        for job in jobs:
            click.echo(job.id if no_trunc else job.id[:12])
    elif template:
        for job in jobs:
            click.echo(template.format(**format_fields(job, no_trunc)))
    else:
        command = (lambda j: " ".join(j.command)) if no_trunc else (lambda j: truncate(" ".join(j.command), 40))
        print_table(
            ["JOB ID", "STATE", "EXIT", "RESTARTS", "CREATED", "COMMAND", "NAME", "WORKFLOW", "PORTS"],
            [(j.id if no_trunc else j.id[:12], j.state, j.exit_code if j.ended else "-", j.restart_count,
              ago(j.created_at_ns), command(j), j.name,
              f"{j.workflow_id[:12]}/{j.workflow_job}" if j.workflow_id else "-", ", ".join(j.ports) or "-")
             for j in jobs],
            width=None if no_trunc else -1,
        )


def check_format(template: str) -> str:
    """``template`` when every ``{field}`` in it is one of FORMAT_FIELDS; InvalidArgument naming the first other."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidArgument(f"--format {template!r}: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in FORMAT_FIELDS or spec or conversion:
            raise InvalidArgument(f"--format: unknown field {{{field}}}; fields are {', '.join(FORMAT_FIELDS)}")
    return template


def format_fields(job: Any, no_trunc: bool) -> dict[str, Any]:
    return {
        "id": job.id if no_trunc else job.id[:12], "name": job.name, "state": job.state,
        "exit_code": job.exit_code if job.ended else "-", "reason": job.reason, "command": " ".join(job.command),
        "image": job.image, "created": ago(job.created_at_ns), "created_at_ns": job.created_at_ns,
        "started_at_ns": job.started_at_ns, "ended_at_ns": job.ended_at_ns,
        "labels": ",".join(f"{k}={v}" for k, v in sorted(job.labels.items())), "workflow_id": job.workflow_id,
        "workflow_job": job.workflow_job, "pid": job.pid, "hostname": job.hostname,
    }


@click.command()
@click.argument("job_id", shell_complete=complete_jobs)
@click.option("--pool", is_flag=True, help="JOB_ID is a pool job: its pool record, and under \"local\" the job on its node.")
@json_option
@click.pass_obj
def inspect(obj: Any, job_id: str, pool: bool, as_json: bool) -> None:
    """Show everything known about a job (JSON)."""
    from capsa.cli.cluster import inspect_pool, is_pool_job

    client = obj.client()
    if pool:
        return inspect_pool(client, job_id)
    try:
        job = client.get_job(job_id)
    except NotFound:   # not a job of this node: perhaps a pool job (inspected wherever it runs)
        if not is_pool_job(client, job_id):
            raise
        return inspect_pool(client, job_id)
    emit(job_dict(job))


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Follow live output until the job ends (composes with --tail/--since).")
@click.option("--from-seq", type=int, default=0, help="Resume from this chunk sequence number.")
@click.option("-n", "--tail", default="all", metavar="N", help="Only the last N lines of history ('all': everything).")
@click.option("--since", default="", metavar="WHEN", help="Only output since a duration ago (10m, 1h30m) or RFC 3339 time.")
@click.option("--until", default="", metavar="WHEN", help="Only output before a duration ago or RFC 3339 time.")
@click.option("-t", "--timestamps", is_flag=True, help="Start each line with the time it was written (RFC 3339, UTC).")
@click.option("--stdout", "only_stdout", is_flag=True, help="Only the job's stdout.")
@click.option("--stderr", "only_stderr", is_flag=True, help="Only the job's stderr.")
@click.option("--pool", is_flag=True, help="JOB_ID is a pool job (read from the node that runs it).")
@json_option
@click.argument("job_id", shell_complete=complete_jobs)
@click.pass_obj
def logs(obj: Any, follow: bool, from_seq: int, tail: str, since: str, until: str, timestamps: bool,
         only_stdout: bool, only_stderr: bool, pool: bool, as_json: bool, job_id: str) -> None:
    """Print a job's output (stdout to stdout, stderr to stderr)."""
    from capsa.selectors import parse_since

    if tail == "all":
        lines = 0
    elif tail.isdigit():
        lines = int(tail) or -1   # --tail 0: no history, only what comes next (with -f)
    else:
        raise InvalidArgument(f"--tail {tail!r}: expected a number of lines or 'all'")
    if only_stdout and only_stderr:
        raise InvalidArgument("--stdout and --stderr together: leave both out for both streams")
    since_ns = parse_since(since, what="--since") if since else 0
    until_ns = parse_since(until, what="--until") if until else 0
    if until_ns and follow:
        raise InvalidArgument("--until reads history only: it cannot be combined with -f")
    out, err = sys.stdout.buffer, sys.stderr.buffer
    stamper = _Stamper() if timestamps else None
    if pool:
        from capsa.cli.cluster import pool_log_chunks

        chunks = pool_log_chunks(obj.client(), job_id, follow=follow, from_seq=from_seq, tail=tail, since=since,
                                 until=until, stream=1 if only_stdout else 2 if only_stderr else 0)
    else:
        from capsa.cli.cluster import local_or_pool_chunks

        client = obj.client()
        chunks = local_or_pool_chunks(client, job_id, client.stream_logs(
            job_id, follow=follow, from_seq=from_seq, tail=lines, since_ns=since_ns, until_ns=until_ns,
            stream=1 if only_stdout else 2 if only_stderr else 0), follow=follow, from_seq=from_seq, tail=tail,
            since=since, until=until, stream=1 if only_stdout else 2 if only_stderr else 0)
    for chunk in chunks:
        if as_json:
            emit_line = {"seq": chunk.seq, "stream": "stdout" if chunk.stream == 1 else "stderr",
                         "timestamp_ns": chunk.timestamp_ns, "data_b64": base64.b64encode(chunk.data).decode()}
            import json

            out.write((json.dumps(emit_line) + "\n").encode())
            out.flush()
            continue
        target = out if chunk.stream == 1 else err
        target.write(stamper.stamp(chunk.stream, chunk.timestamp_ns, chunk.data) if stamper else chunk.data)
        target.flush()


class _Stamper:
    """Puts the time of its chunk before every line; a line split over chunks is stamped once, per stream."""

    def __init__(self) -> None:
        self.mid_line: dict[int, bool] = {}

    def stamp(self, stream: int, timestamp_ns: int, data: bytes) -> bytes:
        import datetime as dt

        when = dt.datetime.fromtimestamp(timestamp_ns // 1_000_000_000, dt.UTC)
        prefix = (when.strftime("%Y-%m-%dT%H:%M:%S") + f".{timestamp_ns % 1_000_000_000:09d}Z ").encode()
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if not self.mid_line.get(stream):
                out += prefix
            out += line
            self.mid_line[stream] = not line.endswith(b"\n")
        return bytes(out)


@click.command()
@click.option("-t", "--time", "grace", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait between SIGTERM and SIGKILL (0: SIGKILL at once) [default: the daemon's, 10 s].")
@click.option("--pool", is_flag=True, help="JOB_IDS are pool jobs (stopped wherever they run).")
@json_option
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_jobs)
@click.pass_obj
def stop(obj: Any, grace: float | None, pool: bool, as_json: bool, job_ids: tuple[str, ...]) -> None:
    """Stop jobs: SIGTERM, then SIGKILL after the grace period."""
    if pool:
        from capsa.cli.cluster import stop_pool

        return stop_pool(obj.client(), job_ids, grace or 0, as_json=as_json)   # the pool's 0 is its default
    results = [obj.client().stop_job(j, grace_seconds=grace) for j in job_ids]
    if as_json:
        emit([job_dict(j) for j in results])
    else:
        for job in results:
            click.echo(job.id[:12])


@click.command()
@click.option("-f", "--force", is_flag=True, help="Stop the job first if it is running.")
@click.option("--pool", is_flag=True, help="JOB_IDS are pool jobs: remove the pool's records (each node keeps its"
              " local job until its own prune).")
@json_option
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_jobs)
@click.pass_obj
def rm(obj: Any, force: bool, pool: bool, as_json: bool, job_ids: tuple[str, ...]) -> None:
    """Remove ended jobs, their logs and files."""
    if pool:
        from capsa.cli.cluster import rm_pool

        removed = rm_pool(obj.client(), job_ids, force=force)
    else:
        removed = [obj.client().delete_job(j, force=force) for j in job_ids]
    if as_json:
        emit({"removed": removed})
    else:
        for job_id in removed:
            click.echo(job_id[:12])


COMMANDS = [run, ps, inspect, logs, stop, rm]
