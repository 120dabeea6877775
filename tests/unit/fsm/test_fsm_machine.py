"""Machine declarations, retry policy and the control-flow values, without an engine."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from pydantic import BaseModel

from capsa.errors import CapsaError, ChecksumMismatch, InvalidArgument
from capsa.fsm import Abort, Context, Handoff, Machine, RetryPolicy
from capsa.fsm.machine import dump_json


def _step(ctx: Context, request: Any) -> Any:
    return request


def _fin(ctx: Context, info: Any) -> None:
    return None


def test_chain_builder_declares_transitions_in_order_with_queue_and_finalizers() -> None:
    machine = (
        Machine.define("image.pull", queue="download")
        .start("resolve", _step)
        .then("fetch", _step)
        .then("unpack", _step)
        .end(_fin)
    )
    assert machine.name == "image.pull"
    assert machine.queue == "download"
    assert machine.transition_names == ("resolve", "fetch", "unpack")
    assert machine.finalizers == (_fin,)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Machine.define("m").then("a", _step),
        lambda: Machine.define("m").start("a", _step).start("b", _step),
        lambda: Machine.define("m").start("a", _step).then("a", _step).end(),
        lambda: Machine.define("m").start("", _step).end(),
        lambda: Machine.define("m").start("a", "not callable").end(),  # type: ignore[arg-type]
        lambda: Machine.define("").start("a", _step).end(),
        lambda: Machine("m", ()),
    ],
)
def test_malformed_machines_are_rejected(build: Any) -> None:
    with pytest.raises(InvalidArgument):
        build()


def test_retry_delay_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=30, max_attempts=5)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter actually spreads the waits
    assert policy.delay(10_000, rng) <= 30.0


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(InvalidArgument):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidArgument):
        RetryPolicy(base_s=-1)


def test_handoff_takes_output_or_defer_to_but_not_both() -> None:
    assert Handoff({"digest": "x"}).output == {"digest": "x"}
    assert Handoff(defer_to="run-1").defer_to == "run-1"
    with pytest.raises(InvalidArgument):
        Handoff({"x": 1}, defer_to="run-1")


def test_abort_wraps_a_capsa_error_or_a_message() -> None:
    error = ChecksumMismatch("layer sha256:ab: got sha256:cd")
    assert Abort(error).error is error
    wrapped = Abort("the tar is hostile").error
    assert type(wrapped) is CapsaError and wrapped.message == "the tar is hostile"


class _Layer(BaseModel):
    digest: str
    size: int


@dataclasses.dataclass
class _Plain:
    name: str
    layers: list[_Layer]


def test_dump_json_accepts_pydantic_models_and_dataclasses() -> None:
    value = {"plain": _Plain("alpine", [_Layer(digest="sha256:ab", size=3)])}
    assert json.loads(dump_json(value)) == {
        "plain": {"name": "alpine", "layers": [{"digest": "sha256:ab", "size": 3}]}
    }
    with pytest.raises(TypeError):
        dump_json({"x": object()})
    with pytest.raises(ValueError):
        dump_json(float("nan"))
