"""Workflows (with their live DAG), images, capsules, runtimes, networks and volumes."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from capsa.web import views
from capsa.web.app import WebApp
from capsa.web.pages_jobs import event_stream, wants_fragment
from capsa.web.streams import poll_events

__all__ = ["routes"]


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


def routes(web: WebApp) -> list[Route]:
    async def workflows(request: Request) -> Response:
        node = web.node(request)
        items = await node.call(node.client.list_workflows, limit=500)
        # Workflow jobs are jobs: the jobs fingerprint stream tells this table when to refresh.
        template = "_workflows_table.html" if wants_fragment(request) else "workflows.html"
        return web.render(request, template, workflows=items)

    async def workflow(request: Request) -> Response:
        node = web.node(request)
        wf = await node.call(node.client.get_workflow, request.path_params["workflow"])
        return web.render(request, "workflow.html", wf=wf, graph=views.workflow_graph(wf))

    async def workflow_events(request: Request) -> Response:
        node = web.node(request)
        workflow_id = request.path_params["workflow"]

        async def states() -> Any:
            return views.workflow_states(await node.call(node.client.get_workflow, workflow_id))
        return event_stream(poll_events(states, interval=0.5, until=lambda s: s["ended"]))

    async def workflow_cancel(request: Request) -> Response:
        node = web.node(request)
        web.require_change(node)
        wf = await node.call(node.client.cancel_workflow, request.path_params["workflow"])
        node.invalidate_jobs()
        return PlainTextResponse(f"workflow {wf.state}")

    async def images(request: Request) -> Response:
        node = web.node(request)
        items = await node.call(node.client.list_images)
        return web.render(request, "images.html", images=items)

    async def image(request: Request) -> Response:
        node = web.node(request)
        ref = request.path_params["ref"]
        img = await node.call(node.client.inspect_image, ref)
        history = await node.call(node.client.image_history, img.ref, limit=20)
        return web.render(request, "image.html", image=img, history=history, config=_pretty_json(img.config_json))

    async def capsules(request: Request) -> Response:
        node = web.node(request)
        items = await node.call(node.client.list_capsules)
        return web.render(request, "capsules.html", capsules=items, graph=views.capsule_graph(list(items)))

    async def capsule(request: Request) -> Response:
        node = web.node(request)
        name = request.path_params["name"]
        everything = await node.call(node.client.list_capsules)
        versions = [c for c in everything if c.name == name]
        if not versions:
            versions = [await node.call(node.client.inspect_capsule, name)]   # raises NotFound with its message
        return web.render(request, "capsule.html", name=name, versions=versions,
                          graph=views.capsule_graph(list(everything)))

    async def runtimes(request: Request) -> Response:
        node = web.node(request)
        items = await node.call(node.client.list_runtimes)
        return web.render(request, "runtimes.html", runtimes=items)

    async def networks(request: Request) -> Response:
        node = web.node(request)
        nets = await node.call(node.client.list_networks)
        vols = await node.call(node.client.list_volumes)
        return web.render(request, "resources.html", networks=nets, volumes=vols)

    return [
        Route("/workflows", workflows),
        Route("/workflows/{workflow}", workflow),
        Route("/workflows/{workflow}/events", workflow_events),
        Route("/workflows/{workflow}/cancel", workflow_cancel, methods=["POST"]),
        Route("/images", images),
        Route("/images/{ref:path}", image),
        Route("/capsules", capsules),
        Route("/capsules/{name}", capsule),
        Route("/runtimes", runtimes),
        Route("/resources", networks),
    ]
