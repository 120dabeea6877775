"""Self-contained runtimes (Joblet ADR-004), built by capsa as images.

A runtime is a complete root filesystem for a language or toolset (``python-3.11@1``), built
from a spec (:mod:`capsa.runtimes.spec`) by the durable ``runtime.build`` machine
(:mod:`capsa.runtimes.builder`) and stored as the image ``runtime:NAME@VERSION``. Jobs run in
one with ``capsa run --runtime NAME[@VERSION]``: their root is the runtime alone.

    runtimes = RuntimeService(engine, images, jobs, home, queue="runtime-build")
    handle = runtimes.start_build(Path("runtimes/python-3.11.yaml").read_text())
    for event in runtimes.watch(handle.run_id):
        sys.stdout.buffer.write(event.log)
    jobs.run(RunRequest(command=("python3", "-V"), runtime="python-3.11"))
"""

from capsa.runtimes.builder import BUILD, IMAGE_PREFIX, image_ref, step_key
from capsa.runtimes.service import BuildEvent, BuildHandle, Runtime, RuntimeService
from capsa.runtimes.spec import (
    Base,
    DebootstrapBase,
    PackagesStep,
    RunStep,
    RuntimeSpec,
    host_mirror,
    load_spec,
    parse_runtime_name,
    parse_spec,
)

__all__ = [
    "BUILD",
    "IMAGE_PREFIX",
    "QUEUE",
    "Base",
    "BuildEvent",
    "BuildHandle",
    "DebootstrapBase",
    "PackagesStep",
    "RunStep",
    "Runtime",
    "RuntimeService",
    "RuntimeSpec",
    "host_mirror",
    "image_ref",
    "load_spec",
    "parse_runtime_name",
    "parse_spec",
    "step_key",
]

#: the engine queue the daemon gives runtime builds (see capsa/daemon.py)
QUEUE = "runtime-build"
