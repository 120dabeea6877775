"""Workflows of jobs (Joblet ADR-002: a service of their own, separate from jobs).

A workflow is a YAML document of named jobs with ``requires`` between them::

    from capsa.workflows import WorkflowService, validate_workflow
    wf = validate_workflow(text)                 # InvalidArgument lists every problem, with lines
    service = WorkflowService(db, engine, jobs, secret_box=SecretBox(home))  # before engine.resume()
    workflow = service.submit(text, base_dir="/home/me/pipeline")
    service.get(workflow.id).jobs                # per-job states, job ids, reasons
    service.cancel(workflow.id)

Modules: :mod:`.schema` (the YAML as models), :mod:`.conditions` (``requires``, list and
expression form), :mod:`.dag` (cycles, order), :mod:`.validation` (all errors with lines),
:mod:`.service` (the domain) and ``_runner`` (the durable execution loop).
"""

from capsa.workflows.conditions import Condition, ConditionError, parse_expression, parse_requires
from capsa.workflows.dag import find_cycles, topological_order
from capsa.workflows.model import Workflow, WorkflowJob, WorkflowJobState, WorkflowState
from capsa.workflows.schema import JobSpec, ResourcesSpec, WorkflowSpec
from capsa.workflows.service import DEFAULT_MAX_PARALLEL, MACHINE, QUEUE, WorkflowService
from capsa.workflows.validation import (
    Issue,
    Registries,
    ValidatedWorkflow,
    check_workflow,
    compile_spec,
    validate_workflow,
)

__all__ = [
    "DEFAULT_MAX_PARALLEL",
    "MACHINE",
    "QUEUE",
    "Condition",
    "ConditionError",
    "Issue",
    "JobSpec",
    "Registries",
    "ResourcesSpec",
    "ValidatedWorkflow",
    "Workflow",
    "WorkflowJob",
    "WorkflowJobState",
    "WorkflowService",
    "WorkflowSpec",
    "WorkflowState",
    "check_workflow",
    "compile_spec",
    "find_cycles",
    "parse_expression",
    "parse_requires",
    "topological_order",
    "validate_workflow",
]
