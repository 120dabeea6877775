"""Metrics commands: `capsa stats ID [--follow]` for one job, `capsa top` for the node."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

import click

from capsa.cli.completion import complete_jobs
from capsa.cli.output import emit, format_size, json_option, print_table
from capsa.cli.protojson import message_dict

__all__ = ["COMMANDS", "human_bytes", "metrics_dict"]

_QUEUE_FIELDS = ("name", "depth", "in_flight", "limit", "waited_count", "waited_sum_seconds", "wait_p50_seconds",
                 "wait_p99_seconds")
_PULL_FIELDS = ("ref", "run_id", "state", "phase", "layers_done", "layers_total", "bytes_done", "bytes_total",
                "started_at_ns")
_COLUMNS = ["TIME", "CPU%", "CPU-TIME", "MEM", "MEM-PEAK", "IO-READ", "IO-WRITE", "PIDS", "NET-RX", "NET-TX"]


def human_bytes(value: float | None) -> str:
    return format_size(value, binary=True)


def metrics_dict(m: Any) -> dict[str, Any]:
    """A sample as JSON: unset counters (not reported by this host) are null."""
    data: dict[str, Any] = {"job_id": m.job_id, "name": m.name, "timestamp_ns": int(m.timestamp_ns)}
    for field in ("cpu_usage_ns", "cpu_percent", "memory_current_bytes", "memory_peak_bytes", "io_read_bytes",
                  "io_write_bytes", "pids", "net_rx_bytes", "net_tx_bytes", "cpu_throttled_ns", "oom_kills"):
        data[field] = getattr(m, field) if m.HasField(field) else None
    return data


def _opt(m: Any, field: str) -> Any:
    return getattr(m, field) if m.HasField(field) else None


def _row(m: Any) -> list[str]:
    cpu = _opt(m, "cpu_percent")
    usage = _opt(m, "cpu_usage_ns")
    return [
        dt.datetime.fromtimestamp(m.timestamp_ns / 1e9).strftime("%H:%M:%S"),
        "-" if cpu is None else f"{cpu:.1f}",
        "-" if usage is None else f"{usage / 1e9:.2f}s",
        human_bytes(_opt(m, "memory_current_bytes")), human_bytes(_opt(m, "memory_peak_bytes")),
        human_bytes(_opt(m, "io_read_bytes")), human_bytes(_opt(m, "io_write_bytes")),
        "-" if _opt(m, "pids") is None else str(m.pids),
        human_bytes(_opt(m, "net_rx_bytes")), human_bytes(_opt(m, "net_tx_bytes")),
    ]


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Print every new sample until the job ends.")
@click.option("--history", is_flag=True, help="First print the samples the daemon keeps in memory.")
@json_option
@click.argument("job_id", shell_complete=complete_jobs)
@click.pass_obj
def stats(obj: Any, follow: bool, history: bool, as_json: bool, job_id: str) -> None:
    """Show a job's CPU, memory, IO, pids and network usage (one JSON object per line with --json)."""
    samples = obj.client().metrics_stream(job_id, follow=follow, history=history)
    if as_json and not follow and not history:
        emit(metrics_dict(next(iter(samples))))
        return
    header = True
    for sample in samples:
        if as_json:
            sys.stdout.write(json.dumps(metrics_dict(sample)) + "\n")
        else:
            if header:   # fixed-width lines, so a followed stream stays aligned
                click.echo(" ".join(f"{c:>9}" for c in _COLUMNS))
                header = False
            click.echo(" ".join(f"{c:>9}" for c in _row(sample)))
        sys.stdout.flush()


def _node_dict(node: Any) -> dict[str, Any]:
    data = message_dict(node)
    data["jobs"] = [metrics_dict(j) for j in node.jobs]
    for key in ("timestamp_ns", "memory_total_bytes", "memory_available_bytes", "disk_total_bytes",
                "disk_free_bytes"):
        data[key] = int(data.get(key, 0))
    return data


def _print_node(node: Any) -> None:
    used = node.memory_total_bytes - node.memory_available_bytes
    disk_used = node.disk_total_bytes - node.disk_free_bytes
    click.echo(f"CPU  {node.cpu_percent:5.1f}% of {node.cpu_count} CPUs   load {node.load1:.2f} {node.load5:.2f}"
               f" {node.load15:.2f}   up {dt.timedelta(seconds=int(node.uptime_seconds))}")
    click.echo(f"MEM  {human_bytes(used)} used of {human_bytes(node.memory_total_bytes)}"
               f" ({human_bytes(node.memory_available_bytes)} available)")
    click.echo(f"DISK {human_bytes(disk_used)} used of {human_bytes(node.disk_total_bytes)} ({node.disk_path})")
    click.echo("")
    jobs = sorted(node.jobs, key=lambda j: -(_opt(j, "cpu_percent") or 0.0))
    print_table(["JOB ID", "NAME", "CPU %", "MEM", "PIDS"],
                [(j.job_id[:12], j.name, "-" if _opt(j, "cpu_percent") is None else f"{j.cpu_percent:.1f}",
                  human_bytes(_opt(j, "memory_current_bytes")), "-" if _opt(j, "pids") is None else j.pids)
                 for j in jobs])


def _pipeline_dict(pipeline: Any) -> dict[str, Any]:
    # Every field, zeros included (message_dict drops unset scalars, and a depth of 0 is the news).
    return {"queues": [{f: getattr(q, f) for f in _QUEUE_FIELDS} for q in pipeline.queues],
            "pulls": [{f: getattr(p, f) for f in _PULL_FIELDS} for p in pipeline.pulls]}


def _print_pipeline(pipeline: Any) -> None:
    click.echo("")
    print_table(["QUEUE", "DEPTH", "IN FLIGHT", "LIMIT", "WAIT P50", "WAIT P99"],
                [(q.name or "(unqueued)", q.depth, q.in_flight, q.limit, f"{q.wait_p50_seconds:g}s",
                  f"{q.wait_p99_seconds:g}s") for q in pipeline.queues])
    if pipeline.pulls:
        click.echo("")
        print_table(["PULLING", "STATE", "PHASE", "LAYERS", "BYTES"],
                    [(p.ref, p.state, p.phase, f"{p.layers_done}/{p.layers_total}",
                      f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}") for p in pipeline.pulls])


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Refresh until interrupted.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes.")
@json_option
@click.pass_obj
def top(obj: Any, follow: bool, interval: float, as_json: bool) -> None:
    """Show the node's CPU, memory and disk use, the running jobs by CPU, queues and pulls in flight."""
    client = obj.client()
    while True:
        node = client.node_stats()
        pipeline = client.pipeline()
        if as_json:
            emit({**_node_dict(node), **_pipeline_dict(pipeline)})
        else:
            if follow:
                click.clear()
            _print_node(node)
            _print_pipeline(pipeline)
        if not follow:
            return
        time.sleep(max(0.2, interval))


COMMANDS = [stats, top]
