"""``requires``: when a job of a workflow may start, in list or expression form.

List form (every item must hold)::

    requires:
      - fetch: COMPLETED
      - lint: FINISHED

Expression form, parsed by a small recursive-descent parser::

    requires: "train=COMPLETED OR (fetch IN (FAILED) AND train=FINISHED)"

    expr    := or
    or      := and ("OR" and)*
    and     := unary ("AND" unary)*
    unary   := "NOT" unary | primary
    primary := "(" expr ")" | JOB "=" STATE | JOB "IN" "(" STATE ("," STATE)* ")"

Keywords and states are case-insensitive; job names are not. COMPLETED and FAILED name a
job's outcome; FINISHED means either. A job that was SKIPPED or CANCELED satisfies none of
them. Evaluation is three-valued (Kleene): a requirement is True (start the job), False (it can
no longer hold: skip the job) or None (wait), so a job starts as soon as enough is known, e.g.
``a=COMPLETED OR b=COMPLETED`` holds when either has completed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STATES",
    "All",
    "And",
    "Atom",
    "Condition",
    "ConditionError",
    "Not",
    "Or",
    "parse_expression",
    "parse_requires",
]

STATES = ("COMPLETED", "FAILED", "FINISHED")
_MEANS = {"COMPLETED": frozenset({"COMPLETED"}), "FAILED": frozenset({"FAILED"}),
          "FINISHED": frozenset({"COMPLETED", "FAILED"})}
_STATES_TEXT = "COMPLETED, FAILED or FINISHED"


class ConditionError(ValueError):
    """A malformed requirement. ``column`` is 1-based in the expression text (0: not positional);
    ``path`` locates a list-form item (index, job) for the caller's line lookup."""

    def __init__(self, message: str, *, column: int = 0, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.path = path


class Condition:
    """A parsed requirement: evaluate against the outcomes of jobs, name the jobs it reads."""

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        raise NotImplementedError

    def jobs(self) -> set[str]:
        raise NotImplementedError

    def text(self, top: bool = True) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class All(Condition):
    """No requirement: the job may start at once."""

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        return True

    def jobs(self) -> set[str]:
        return set()

    def text(self, top: bool = True) -> str:
        return "(none)"


@dataclass(frozen=True)
class Atom(Condition):
    job: str
    states: tuple[str, ...]   # as written (normalised to upper case), each one of STATES

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        outcome = outcomes.get(self.job)
        if outcome is None:
            return None
        return any(outcome in _MEANS[s] for s in self.states)

    def jobs(self) -> set[str]:
        return {self.job}

    def text(self, top: bool = True) -> str:
        if len(self.states) == 1:
            return f"{self.job}={self.states[0]}"
        return f"{self.job} IN ({', '.join(self.states)})"


@dataclass(frozen=True)
class Not(Condition):
    operand: Condition

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        value = self.operand.evaluate(outcomes)
        return None if value is None else not value

    def jobs(self) -> set[str]:
        return self.operand.jobs()

    def text(self, top: bool = True) -> str:
        return f"NOT {self.operand.text(top=False)}"


@dataclass(frozen=True)
class And(Condition):
    operands: tuple[Condition, ...]

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        values = [op.evaluate(outcomes) for op in self.operands]
        if False in values:
            return False
        return None if None in values else True

    def jobs(self) -> set[str]:
        return set().union(*(op.jobs() for op in self.operands))

    def text(self, top: bool = True) -> str:
        inner = " AND ".join(op.text(top=False) for op in self.operands)
        return inner if top else f"({inner})"


@dataclass(frozen=True)
class Or(Condition):
    operands: tuple[Condition, ...]

    def evaluate(self, outcomes: Mapping[str, str | None]) -> bool | None:
        values = [op.evaluate(outcomes) for op in self.operands]
        if True in values:
            return True
        return None if None in values else False

    def jobs(self) -> set[str]:
        return set().union(*(op.jobs() for op in self.operands))

    def text(self, top: bool = True) -> str:
        inner = " OR ".join(op.text(top=False) for op in self.operands)
        return inner if top else f"({inner})"


# -- list form ---------------------------------------------------------------------------------
def _state(value: object, where: str, path: tuple[str | int, ...]) -> str:
    if not isinstance(value, str) or value.strip().upper() not in STATES:
        raise ConditionError(f"{where}: unknown state {value!r}; use {_STATES_TEXT}", path=path)
    return value.strip().upper()


def parse_requires(value: Any) -> Condition:
    """Parse a job's ``requires`` (None, a list of ``{job: STATE}`` items, or an expression).

    Raises :class:`ConditionError` for the first problem (a requirement is short; one error
    at a time is enough there, while the validator still reports every *job's* problems).
    """
    if value is None:
        return All()
    if isinstance(value, str):
        return parse_expression(value)
    if not isinstance(value, list):
        raise ConditionError(f"requires must be a list like `- fetch: COMPLETED` or an expression string,"
                             f" not {type(value).__name__}")
    atoms: list[Condition] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not item:
            raise ConditionError(f"requires item {index + 1} must look like `- JOB: COMPLETED|FAILED|FINISHED`,"
                                 f" got {item!r}", path=(index,))
        for job, state in item.items():
            if not isinstance(job, str):
                raise ConditionError(f"requires item {index + 1}: job name {job!r} must be text", path=(index,))
            atoms.append(Atom(job, (_state(state, f"requires {job}", (index, job)),)))
    if not atoms:
        return All()
    return atoms[0] if len(atoms) == 1 else And(tuple(atoms))


# -- expression form ------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)|(?P<punct>[=(),])|(?P<bad>\S))")


@dataclass(frozen=True)
class _Tok:
    kind: str      # name | punct | end
    text: str
    column: int    # 1-based


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        if match is None:   # only whitespace remains
            break
        if match.group("bad") is not None:
            col = match.start("bad") + 1
            raise ConditionError(f"unexpected character {match.group('bad')!r} at column {col}", column=col)
        kind = "name" if match.group("name") is not None else "punct"
        tokens.append(_Tok(kind, match.group(kind), match.start(kind) + 1))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.tokens[self.i]

    def _is_kw(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.upper() == word

    def _fail(self, expected: str) -> ConditionError:
        found = "the end of the expression" if self.tok.kind == "end" else repr(self.tok.text)
        return ConditionError(f"expected {expected} at column {self.tok.column}, found {found}",
                              column=self.tok.column)

    def _expect_punct(self, char: str, expected: str) -> None:
        if self.tok.kind != "punct" or self.tok.text != char:
            raise self._fail(expected)
        self.i += 1

    def parse(self) -> Condition:
        if self.tok.kind == "end":
            raise ConditionError("requires expression is empty", column=1)
        cond = self._or()
        if self.tok.kind != "end":
            if self.tok.text == ")":
                raise ConditionError(f"unbalanced ')' at column {self.tok.column}", column=self.tok.column)
            raise self._fail("AND, OR or the end of the expression")
        return cond

    def _or(self) -> Condition:
        operands = [self._and()]
        while self._is_kw("OR"):
            self.i += 1
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> Condition:
        operands = [self._unary()]
        while self._is_kw("AND"):
            self.i += 1
            operands.append(self._unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _unary(self) -> Condition:
        if self._is_kw("NOT"):
            self.i += 1
            return Not(self._unary())
        return self._primary()

    def _primary(self) -> Condition:
        tok = self.tok
        if tok.kind == "punct" and tok.text == "(":
            self.i += 1
            inner = self._or()
            if self.tok.kind != "punct" or self.tok.text != ")":
                if self.tok.kind == "end":
                    raise ConditionError(f"'(' at column {tok.column} is never closed", column=tok.column)
                raise self._fail("')'")
            self.i += 1
            return inner
        if tok.kind != "name" or tok.text.upper() in ("AND", "OR", "IN"):
            raise self._fail("a job name, NOT or '('")
        job = tok.text
        self.i += 1
        if self.tok.kind == "punct" and self.tok.text == "=":
            self.i += 1
            return Atom(job, (self._state(),))
        if self._is_kw("IN"):
            self.i += 1
            self._expect_punct("(", "'(' after IN")
            states = [self._state()]
            while self.tok.kind == "punct" and self.tok.text == ",":
                self.i += 1
                states.append(self._state())
            self._expect_punct(")", "',' or ')' in the IN list")
            return Atom(job, tuple(dict.fromkeys(states)))
        raise self._fail(f"'=' or IN after job name {job!r}")

    def _state(self) -> str:
        tok = self.tok
        if tok.kind != "name":
            raise self._fail(f"a job state ({_STATES_TEXT})")
        if tok.text.upper() not in STATES:
            raise ConditionError(f"unknown job state {tok.text!r} at column {tok.column}; use {_STATES_TEXT}",
                                 column=tok.column)
        self.i += 1
        return tok.text.upper()


def parse_expression(text: str) -> Condition:
    """Parse the expression form; :class:`ConditionError` names the column of the problem."""
    return _Parser(text).parse()
