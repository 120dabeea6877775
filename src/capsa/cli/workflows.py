"""`capsa workflow ...`: run, ls, status, cancel."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from capsa.cli.output import ago, emit, json_option, key_values, print_table
from capsa.cli.protojson import message_dict
from capsa.errors import InvalidArgument

__all__ = ["COMMANDS"]

_INT_FIELDS = ("created_at_ns", "started_at_ns", "ended_at_ns")


def workflow_dict(workflow: Any) -> dict[str, Any]:
    data = message_dict(workflow)
    for key in _INT_FIELDS:
        data[key] = int(data.get(key, 0))
    for job in data.get("jobs", []):
        for key in ("started_at_ns", "ended_at_ns"):
            job[key] = int(job.get(key, 0))
        job["exit_code"] = job["exit_code"] if job.pop("has_exit_code", False) else None
    return data


def _counts(workflow: Any) -> str:
    done = sum(1 for j in workflow.jobs if j.state == "COMPLETED")
    return f"{done}/{len(workflow.jobs)}"


def _duration(start_ns: int, end_ns: int) -> str:
    if not start_ns:
        return "-"
    seconds = ((end_ns or time.time_ns()) - start_ns) / 1e9
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _exit_status(workflow: Any) -> int:
    return {"COMPLETED": 0, "CANCELED": 130}.get(workflow.state, 1)


@click.group()
def workflow() -> None:
    """Run workflows of jobs (YAML: jobs with `requires` between them)."""


@workflow.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the workflow until it ends; exit non-zero if any job failed.")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Label the workflow and each of its jobs (repeatable).")
@click.option("--pool", is_flag=True, help="Place each job on the pool (docs/cluster.md).")
@click.option("--constraint", "constraints", multiple=True, metavar="LABEL=VALUE",
              help="With --pool: every job only on nodes with this label (repeatable).")
@json_option
@click.pass_obj
def run(obj: Any, file: Path, wait: bool, labels: tuple[str, ...], pool: bool, constraints: tuple[str, ...],
        as_json: bool) -> int:
    """Validate FILE and start it; prints the workflow id."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {file}: {exc}") from None
    client = obj.client()
    if pool:
        from capsa.cli.cluster import run_workflow_on_pool

        # Uploads are sent to this daemon only: a pool's node reports a job's `uploads` as not sent.
        return run_workflow_on_pool(client, text, base_dir=str(file.resolve().parent), constraints=constraints,
                                    wait=wait, as_json=as_json)
    base = file.resolve().parent
    text = _send_uploads(client, text, base)
    submitted = client.submit_workflow(text, base_dir=str(base), source=str(file),
                                       labels=key_values(labels, "--label"))
    if not wait:
        if as_json:
            emit(workflow_dict(submitted))
        else:
            click.echo(submitted.id)
        return 0
    if not as_json:
        click.echo(submitted.id)
    final = _follow(client, submitted.id, quiet=as_json)
    if as_json:
        emit(workflow_dict(final))
    else:
        _print_jobs(final, detail=False)
        if final.reason:
            click.echo(f"workflow {final.id[:12]} {final.state}: {final.reason}", err=True)
    return _exit_status(final)


def _send_uploads(client: Any, text: str, base: Path) -> str:
    """Upload each job's ``uploads`` (relative to ``base``) and name the sessions in the text sent.

    The YAML travels as text, so the sessions go in an ``upload_sessions`` key appended after the
    user's last line: every line the daemon reports still points into the user's file. A job whose
    paths are unsafe or missing is not uploaded; the daemon's validation then names the line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text   # the daemon reports where
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, dict):
        return text
    sessions: dict[str, str] = {}
    for name, job in jobs.items():
        uploads = job.get("uploads") if isinstance(job, dict) else None
        if not isinstance(name, str) or not isinstance(uploads, list) or not uploads:
            continue
        if not all(isinstance(p, str) and _inside(p) and (base / p).exists() for p in uploads):
            continue
        paths = [str(base / p) for p in uploads]
        def skipped(path: str, why: str, job: str = name) -> None:
            click.echo(f"capsa: {job}: skipping {path}: {why}", err=True)

        sessions[name] = client.upload_paths(paths, on_skip=skipped).session
    if not sessions:
        return text
    if not isinstance(root, yaml.MappingNode) or root.flow_style or text.rstrip().endswith("..."):
        raise InvalidArgument("a workflow with uploads must be a block-style YAML mapping"
                              " (no `{...}` top level, no `...` end marker)")
    lines = [f"  {json.dumps(name)}: {json.dumps(session)}" for name, session in sessions.items()]
    return text + ("" if text.endswith("\n") else "\n") + "upload_sessions:\n" + "\n".join(lines) + "\n"


def _inside(path: str) -> bool:
    """Relative and never climbing out: what the daemon's validation accepts (never read other files)."""
    return bool(path) and "\0" not in path and not path.startswith("/") and ".." not in Path(path).parts


def _follow(client: Any, workflow_id: str, *, quiet: bool) -> Any:
    """Poll until the workflow ends, printing each job's state changes on stderr."""
    seen: dict[str, str] = {}
    try:
        while True:
            current = client.get_workflow(workflow_id)
            for job in current.jobs:
                if not quiet and seen.get(job.name) != job.state and job.state != "WAITING":
                    note = f" ({job.reason})" if job.reason else ""
                    click.echo(f"{job.name}: {job.state}{note}", err=True)
                seen[job.name] = job.state
            if current.ended:
                return current
            time.sleep(0.3)
    except KeyboardInterrupt:
        click.echo(f"capsa: stopped following; the workflow keeps running (capsa workflow cancel {workflow_id[:12]})",
                   err=True)
        sys.exit(130)


@workflow.command(name="ls")
@json_option
@click.pass_obj
def ls(obj: Any, as_json: bool) -> None:
    """List workflows, newest first."""
    workflows = obj.client().list_workflows()
    if as_json:
        emit([workflow_dict(w) for w in workflows])
        return
    print_table(
        ["WORKFLOW ID", "NAME", "STATE", "COMPLETED", "CREATED", "DURATION"],
        [(w.id[:12], w.name, w.state, _counts(w), ago(w.created_at_ns), _duration(w.started_at_ns, w.ended_at_ns))
         for w in workflows],
    )


@workflow.command()
@click.argument("workflow_id")
@click.option("--detail", is_flag=True, help="Also show requirements, exit codes and run times.")
@click.option("--pool", is_flag=True, help="WORKFLOW_ID is a pool workflow (`workflow run --pool`).")
@json_option
@click.pass_obj
def status(obj: Any, workflow_id: str, detail: bool, pool: bool, as_json: bool) -> None:
    """Show a workflow and the state of each of its jobs."""
    if pool:
        from capsa.cli.cluster import workflow_status_pool

        return workflow_status_pool(obj.client(), workflow_id, as_json=as_json)
    wf = obj.client().get_workflow(workflow_id)
    if as_json:
        emit(workflow_dict(wf))
        return
    click.echo(f"workflow {wf.id} ({wf.name}): {wf.state}" + (f": {wf.reason}" if wf.reason else ""))
    if detail and wf.description:
        click.echo(wf.description)
    _print_jobs(wf, detail=detail)


def _print_jobs(wf: Any, *, detail: bool) -> None:
    if detail:
        print_table(
            ["JOB", "STATE", "JOB ID", "EXIT", "DURATION", "REQUIRES", "REASON"],
            [(j.name, j.state, j.job_id[:12] or "-", j.exit_code if j.has_exit_code else "-",
              _duration(j.started_at_ns, j.ended_at_ns), j.requires, j.reason) for j in wf.jobs],
        )
    else:
        print_table(["JOB", "STATE", "JOB ID", "REASON"],
                    [(j.name, j.state, j.job_id[:12] or "-", j.reason) for j in wf.jobs])


@workflow.command()
@click.argument("workflow_id")
@json_option
@click.pass_obj
def cancel(obj: Any, workflow_id: str, as_json: bool) -> None:
    """Cancel a workflow: stop its running jobs, start no more."""
    wf = obj.client().cancel_workflow(workflow_id)
    if as_json:
        emit(workflow_dict(wf))
    else:
        click.echo(f"{wf.id[:12]} {wf.state}")


COMMANDS = [workflow]
