"""Typed transitions: a dataclass-annotated request arrives as that dataclass, fresh or resumed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from capsa.errors import InvalidArgument
from capsa.fsm import Context, Engine, Machine, decode


@dataclass
class Part:
    name: str
    size: int = 0


@dataclass
class Order:
    parts: list[Part]
    note: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Shipped:
    total: int
    names: list[str]


def test_decode_rebuilds_nested_dataclasses_lists_and_optionals() -> None:
    got = decode(Order, {"parts": [{"name": "a", "size": 2}, {"name": "b"}], "tags": {"k": "v"}})
    assert got == Order(parts=[Part("a", 2), Part("b", 0)], note=None, tags={"k": "v"})


def test_decode_names_what_does_not_fit() -> None:
    with pytest.raises(InvalidArgument, match="expected int"):
        decode(Part, {"name": "a", "size": "big"})


def test_a_typed_machine_receives_and_returns_dataclasses(make_engine: Callable[..., Engine]) -> None:
    seen: list[object] = []

    def pack(ctx: Context, order: Order) -> Shipped:
        seen.append(order)
        return Shipped(total=sum(p.size for p in order.parts), names=[p.name for p in order.parts])

    def ship(ctx: Context, shipped: Shipped) -> Shipped:
        seen.append(shipped)
        return shipped

    engine = make_engine()
    engine.register(Machine.define("typed.order").start("pack", pack).then("ship", ship).end())
    info = engine.start("typed.order", "o1", "ship", Order(parts=[Part("a", 2), Part("b", 3)])).wait(timeout=10)
    assert isinstance(seen[0], Order) and seen[0].parts[1] == Part("b", 3)
    assert isinstance(seen[1], Shipped)
    assert info.output == {"total": 5, "names": ["a", "b"]}
