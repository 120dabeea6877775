"""Node overview, the jobs table and the job page, with their live streams and actions."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.gen.capsa.v1 import metrics_pb2 as mpb
from capsa.errors import InvalidArgument
from capsa.web import views
from capsa.web.app import WebApp
from capsa.web.hub import Node
from capsa.web.jobs_table import FILTERS, PAGE_SIZES, SORTS, STATES, JobQuery, job_labels, select
from capsa.web.streams import ThreadStream, log_events, poll_events, sse

__all__ = ["routes"]

_SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


def wants_fragment(request: Request) -> bool:
    """htmx asking for a part of the page; on Back, htmx asks again with the history header and needs it all."""
    return bool(request.headers.get("hx-request")) and not request.headers.get("hx-history-restore-request")


def event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)


def _overview_blocking(node: Node) -> dict[str, Any]:
    """Everything the overview shows, in one worker thread (several RPCs back to back)."""
    client = node.client
    stats = client.node_stats()
    jobs = node.jobs_blocking()
    by_state = Counter(j.state for j in jobs)
    names = {j.id: j for j in jobs}
    running = [{"m": m, "job": names.get(m.job_id)} for m in stats.jobs]
    workflows = client.list_workflows(limit=200)
    active_workflows = [w for w in workflows if not w.ended]
    pipeline = client.pipeline()   # the engine's queues and every unfinished pull, stored image or not
    return {"stats": stats, "by_state": by_state, "running": running, "total_jobs": len(jobs),
            "active_workflows": active_workflows, "queues": list(pipeline.queues), "pulls": list(pipeline.pulls),
            "now_ns": time.time_ns(), "version": client.version()}


def _job_fingerprint(jobs: list[pb.Job]) -> dict[str, Any]:
    """What changes when the table should refresh: a job added, removed or changing state."""
    return {"n": len(jobs), "h": hash(tuple((j.id, j.state) for j in jobs))}


def routes(web: WebApp) -> list[Route]:
    async def overview(request: Request) -> Response:
        node = web.node(request)
        data = await node.call(_overview_blocking, node)
        template = "_overview.html" if wants_fragment(request) else "overview.html"
        return web.render(request, template, **data)

    async def overview_events(request: Request) -> Response:
        node = web.node(request)

        async def tick() -> Any:
            stats = await node.call(node.client.node_stats)
            jobs = await node.jobs()
            return {"t": round(stats.timestamp_ns / 1e9), **_job_fingerprint(jobs)}
        return event_stream(poll_events(tick, interval=2.0))

    async def jobs_page(request: Request) -> Response:
        node = web.node(request)
        t0 = time.perf_counter()
        query = JobQuery.parse(request.query_params)
        page = select(await node.jobs(), query)
        template = "_jobs_table.html" if wants_fragment(request) else "jobs.html"
        response = web.render(request, template, page=page, query=query, filters=FILTERS, states=STATES,
                              sorts=list(SORTS), page_sizes=PAGE_SIZES, now_ns=time.time_ns(),
                              runtime=views.job_runtime, has_labels="label" in FILTERS, labels=job_labels)
        # Server timing for the bench and the browser's network panel.
        response.headers["server-timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
        return response

    async def jobs_events(request: Request) -> Response:
        node = web.node(request)

        async def fingerprint() -> Any:
            return _job_fingerprint(await node.jobs())
        return event_stream(poll_events(fingerprint, interval=1.0))

    async def job_page(request: Request) -> Response:
        node = web.node(request)
        job = await node.call(node.client.get_job, request.path_params["job"])
        capsules = await node.call(node.client.list_capsules)
        attached = [a for c in capsules for a in c.attachments if a.job_id == job.id]
        return web.render(request, "job.html", job=job, attached=attached, summary=views.job_summary(job),
                          runtime=views.job_runtime(job))

    async def job_events(request: Request) -> Response:
        node = web.node(request)
        job_id = request.path_params["job"]

        async def summary() -> Any:
            return views.job_summary(await node.call(node.client.get_job, job_id))
        return event_stream(poll_events(summary, interval=0.5, until=lambda s: s["ended"]))

    def _from_seq(request: Request) -> int:
        """``from_seq`` query parameter, else the browser's ``Last-Event-ID`` + 1, else the start."""
        raw = request.query_params.get("from_seq")
        try:
            if raw is not None:
                return max(1, int(raw))
            last = request.headers.get("last-event-id")
            return int(last) + 1 if last else 1
        except ValueError:
            raise InvalidArgument(f"from_seq must be a number, got {raw!r}") from None

    async def log_stream(request: Request) -> Response:
        node = web.node(request)
        job = await node.call(node.client.get_job, request.path_params["job"])
        wanted = pb.StreamLogsRequest(id=job.id, follow=True, from_seq=_from_seq(request))
        return event_stream(log_events(lambda: node.client.jobs.StreamLogs(wanted, timeout=None)))

    async def log_text(request: Request) -> Response:
        """The whole log, every byte, as it was written (both streams interleaved in order)."""
        node = web.node(request)
        job = await node.call(node.client.get_job, request.path_params["job"])

        async def body() -> AsyncIterator[bytes]:
            # Opened once the response starts (see streams.log_events).
            stream = ThreadStream(node.client.jobs.StreamLogs(pb.StreamLogsRequest(id=job.id, from_seq=1),
                                                              timeout=None))
            try:
                async for batch in stream.batches():
                    if batch:
                        yield b"".join(c.data for c in batch)
                if stream.error is not None:
                    yield f"\n[capsa web: log stream failed: {stream.error}]\n".encode()
            finally:
                stream.close()
        return StreamingResponse(body(), media_type="text/plain; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="{job.id[:12]}.log"', "cache-control": "no-store"})

    async def metrics_stream(request: Request) -> Response:
        node = web.node(request)
        job = await node.call(node.client.get_job, request.path_params["job"])

        async def body() -> AsyncIterator[bytes]:
            stream = ThreadStream(node.client.metrics.MetricsStream(
                mpb.MetricsStreamRequest(id=job.id, follow=not job.ended, history=True), timeout=None))
            try:
                yield sse({"memory_limit": job.resources.max_memory_mb * 1024 * 1024 or None,
                           "cpu_limit": job.resources.max_cpu or None, "pids_limit": job.resources.max_pids or None},
                          event="limits")
                async for batch in stream.batches():
                    if not batch:
                        yield b": keep-alive\n\n"
                        continue
                    yield sse([views.metrics_sample(m) for m in batch], event="samples")
                yield sse({"message": str(stream.error)} if stream.error else {},
                          event="failure" if stream.error else "end")
            finally:
                stream.close()
        return event_stream(body())

    async def job_action(request: Request) -> Response:
        node = web.node(request)
        web.require_change(node)
        job_id, action = request.path_params["job"], request.path_params["action"]
        if action == "stop":
            job = await node.call(node.client.stop_job, job_id)
            message = f"stopped: {job.state}"
        elif action == "cancel":
            job = await node.call(node.client.cancel_job, job_id)
            message = f"canceled: {job.state}"
        elif action == "remove":
            removed = await node.call(node.client.delete_job, job_id, force=False)
            node.invalidate_jobs()
            response = PlainTextResponse(f"removed {removed}")
            response.headers["hx-redirect"] = f"/n/{node.name}/jobs"
            return response
        else:
            raise InvalidArgument(f"unknown action {action!r}")
        node.invalidate_jobs()
        return PlainTextResponse(message)

    return [
        Route("/", overview),
        Route("/events/overview", overview_events),
        Route("/jobs", jobs_page),
        Route("/events/jobs", jobs_events),
        Route("/jobs/{job}", job_page),
        Route("/jobs/{job}/events", job_events),
        Route("/jobs/{job}/logs/events", log_stream),
        Route("/jobs/{job}/logs.txt", log_text),
        Route("/jobs/{job}/metrics/events", metrics_stream),
        Route("/jobs/{job}/{action}", job_action, methods=["POST"]),
    ]
