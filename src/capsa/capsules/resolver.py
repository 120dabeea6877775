"""Dependency resolution over the store's versions, with resolvelib.

Highest acceptable version wins for each capsule; when no combination works,
the error names every capsule involved, who asked for what, and which versions
exist, in one sentence a user can act on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from packaging.requirements import Requirement
from resolvelib import AbstractProvider, BaseReporter, ResolutionImpossible, ResolutionTooDeep, Resolver

from capsa.capsules.model import CapsuleVersion
from capsa.capsules.versions import parse_requirement, satisfies
from capsa.errors import Conflict, NotFound

__all__ = ["resolve"]


class _Provider(AbstractProvider):  # type: ignore[type-arg]
    def __init__(self, by_name: Mapping[str, Sequence[CapsuleVersion]]) -> None:
        self._by_name = by_name

    def identify(self, requirement_or_candidate: Requirement | CapsuleVersion) -> str:
        return requirement_or_candidate.name

    def get_preference(
        self,
        identifier: str,
        resolutions: Mapping[str, CapsuleVersion],
        candidates: Mapping[str, Iterator[CapsuleVersion]],
        information: Mapping[str, Iterator[Any]],
        backtrack_causes: Sequence[Any],
    ) -> tuple[bool, int, str]:
        # Work first on what caused the last backtrack, then on the most constrained.
        caused = any(cause.requirement.name == identifier for cause in backtrack_causes)
        return (not caused, len(self._by_name.get(identifier, ())), identifier)

    def find_matches(
        self,
        identifier: str,
        requirements: Mapping[str, Iterator[Requirement]],
        incompatibilities: Mapping[str, Iterator[CapsuleVersion]],
    ) -> list[CapsuleVersion]:
        wanted = list(requirements[identifier])
        bad = set(incompatibilities[identifier])
        return [
            version
            for version in self._by_name.get(identifier, ())
            if version not in bad and all(satisfies(req, version.version) for req in wanted)
        ]

    def is_satisfied_by(self, requirement: Requirement, candidate: CapsuleVersion) -> bool:
        return satisfies(requirement, candidate.version)

    def get_dependencies(self, candidate: CapsuleVersion) -> list[Requirement]:
        return [parse_requirement(dep) for dep in candidate.deps]


def resolve(available: Iterable[CapsuleVersion], requirements: Sequence[str]) -> list[CapsuleVersion]:
    """Pick one version per capsule so every requirement holds; dependencies come first."""
    by_name: dict[str, list[CapsuleVersion]] = {}
    for version in available:
        by_name.setdefault(version.name, []).append(version)
    for versions in by_name.values():
        versions.sort(key=lambda v: v.parsed_version, reverse=True)
    wanted = [parse_requirement(text) for text in requirements]
    for req in wanted:
        if req.name not in by_name:
            raise NotFound(f"no capsule named {req.name!r} (requested as '{req}')")
    resolver: Resolver = Resolver(_Provider(by_name), BaseReporter())  # type: ignore[type-arg]
    try:
        result = resolver.resolve(wanted, max_rounds=10_000)
    except ResolutionImpossible as exc:
        raise Conflict(_explain(exc.causes, by_name)) from None
    except ResolutionTooDeep:
        raise Conflict(
            "cannot resolve capsules " + ", ".join(str(r) for r in wanted) + ": the search gave up"
        ) from None
    return _dependencies_first(result.mapping)


def _explain(causes: Sequence[Any], by_name: Mapping[str, Sequence[CapsuleVersion]]) -> str:
    asks: dict[str, list[str]] = {}
    for cause in causes:
        who = cause.parent.ref if cause.parent is not None else "the request"
        asks.setdefault(cause.requirement.name, []).append(f"'{cause.requirement}' by {who}")
    parts = []
    for name, demands in sorted(asks.items()):
        existing = sorted(by_name.get(name, ()), key=lambda v: v.parsed_version)
        have = ", ".join(v.version for v in existing) if existing else "none — no capsule has that name"
        parts.append(f"{name} is required as {' and as '.join(demands)} (available: {have})")
    return "cannot resolve capsules: " + "; ".join(parts)


def _dependencies_first(mapping: Mapping[str, CapsuleVersion]) -> list[CapsuleVersion]:
    ordered: list[CapsuleVersion] = []
    state: dict[str, str] = {}

    def visit(name: str) -> None:
        if state.get(name) is not None:
            return  # done, or on the stack (a cycle): order within a cycle is by name
        state[name] = "visiting"
        for dep in sorted(parse_requirement(d).name for d in mapping[name].deps):
            if dep in mapping:
                visit(dep)
        state[name] = "done"
        ordered.append(mapping[name])

    for name in sorted(mapping):
        visit(name)
    return ordered
