"""Turning API messages into what templates show and what the page scripts draw.

Everything here returns plain data; the templates escape it (Jinja autoescape) and the scripts
put it into the page with ``textContent``, never as HTML, so a job named ``<script>`` is a name.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from capsa.api.gen.capsa.v1 import capsules_pb2 as cpb
from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.api.gen.capsa.v1 import workflows_pb2 as wpb

__all__ = ["capsule_graph", "fmt_bytes", "fmt_duration", "fmt_time", "job_summary", "metrics_sample",
           "workflow_graph"]

ACTIVE_STATES = {"SCHEDULED", "PENDING", "RUNNING"}


def fmt_bytes(value: float | int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fmt_time(ns: int) -> str:
    if not ns:
        return "–"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def job_runtime(job: pb.Job, now_ns: int | None = None) -> float | None:
    if not job.started_at_ns:
        return None
    end = job.ended_at_ns or (now_ns or dt.datetime.now(dt.UTC).timestamp() * 1e9)
    return (end - job.started_at_ns) / 1e9


def job_summary(job: pb.Job) -> dict[str, Any]:
    """The fields the job page updates live."""
    return {"id": job.id, "state": job.state, "ended": job.ended, "exit_code": job.exit_code if job.ended else None,
            "signal": job.signal, "reason": job.reason, "pid": job.pid,
            "started": fmt_time(job.started_at_ns), "ended_at": fmt_time(job.ended_at_ns),
            "runtime": fmt_duration(job_runtime(job))}


def metrics_sample(m: mpb.JobMetrics) -> dict[str, Any]:
    """One point for the charts: unset counters stay null (the host does not report them)."""
    def opt(name: str) -> Any:
        return getattr(m, name) if m.HasField(name) else None
    return {"t": m.timestamp_ns / 1e9, "cpu": opt("cpu_percent"), "mem": opt("memory_current_bytes"),
            "mem_peak": opt("memory_peak_bytes"), "io_r": opt("io_read_bytes"), "io_w": opt("io_write_bytes"),
            "pids": opt("pids"), "oom": opt("oom_kills")}


def _edge_label(requires: str, dep: str) -> str:
    """The parts of a normalised requirement that read ``dep``: ``b=COMPLETED``, ``a IN (FAILED, ...)``."""
    pattern = rf"(?<![\w.-])(NOT\s+)?{re.escape(dep)}(?:\s*=\s*\w+|\s+IN\s*\([^)]*\))"
    found = [m.group(0) for m in re.finditer(pattern, requires)]
    return ", ".join(dict.fromkeys(found)) or requires


def workflow_graph(workflow: wpb.Workflow) -> dict[str, Any]:
    """Nodes (jobs, with state) and edges (dependency -> dependant, labelled with its condition)."""
    nodes = [{"id": j.name, "label": j.name, "state": j.state, "job_id": j.job_id, "reason": j.reason,
              "requires": j.requires} for j in workflow.jobs]
    edges = [{"from": dep, "to": j.name, "label": _edge_label(j.requires, dep)}
             for j in workflow.jobs for dep in j.depends_on]
    return {"nodes": nodes, "edges": edges}


def workflow_states(workflow: wpb.Workflow) -> dict[str, Any]:
    return {"state": workflow.state, "reason": workflow.reason, "ended": workflow.ended,
            "jobs": {j.name: {"state": j.state, "job_id": j.job_id, "reason": j.reason,
                              "exit_code": j.exit_code if j.has_exit_code else None} for j in workflow.jobs}}


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def capsule_graph(capsules: list[cpb.Capsule]) -> dict[str, Any]:
    """Every capsule version, an edge to each version of a dependency it could use (specifier as label)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    by_name: dict[str, list[cpb.Capsule]] = {}
    for c in capsules:
        by_name.setdefault(c.name, []).append(c)
    nodes = [{"id": f"{c.name}@{c.version}", "label": f"{c.name}@{c.version}",
              "state": "ATTACHED" if len(c.attachments) else ("PINNED" if c.pinned else "IDLE"), "job_id": ""}
             for c in capsules]
    edges: list[dict[str, str]] = []
    for c in capsules:
        for requirement in c.dependencies:
            match = _REQ_NAME.match(requirement)
            if not match:
                continue
            name, spec_text = match.group(1), match.group(2).split(";")[0].strip()
            try:
                spec = SpecifierSet(spec_text)
            except InvalidSpecifier:
                spec = SpecifierSet()
            targets = [d for d in by_name.get(name, []) if spec.contains(d.version, prereleases=True)]
            if not targets:   # show the unmet requirement rather than hide it
                missing = f"{name} (missing)"
                if not any(n["id"] == missing for n in nodes):
                    nodes.append({"id": missing, "label": missing, "state": "MISSING", "job_id": ""})
                edges.append({"from": f"{c.name}@{c.version}", "to": missing, "label": spec_text or "any"})
            for d in targets:
                edges.append({"from": f"{c.name}@{c.version}", "to": f"{d.name}@{d.version}",
                              "label": spec_text or "any"})
    return {"nodes": nodes, "edges": edges}
