"""`requires`: the list form, the expression parser (precedence, errors with columns), three-valued evaluation."""

from __future__ import annotations

import pytest

from capsa.workflows.conditions import (
    All,
    And,
    Atom,
    ConditionError,
    Not,
    Or,
    parse_expression,
    parse_requires,
)


def test_no_requirement_always_holds() -> None:
    assert parse_requires(None) == All()
    assert parse_requires([]) == All()
    assert All().evaluate({}) is True


def test_list_form_is_an_and_of_its_items() -> None:
    cond = parse_requires([{"fetch": "COMPLETED"}, {"lint": "finished"}])
    assert cond == And((Atom("fetch", ("COMPLETED",)), Atom("lint", ("FINISHED",))))
    assert cond.jobs() == {"fetch", "lint"}


def test_list_form_rejects_unknown_states_and_non_mapping_items_naming_the_item() -> None:
    with pytest.raises(ConditionError, match="unknown state 'DONE'") as bad_state:
        parse_requires([{"fetch": "COMPLETED"}, {"train": "DONE"}])
    assert bad_state.value.path == (1, "train")
    with pytest.raises(ConditionError, match="item 1 must look like") as bad_item:
        parse_requires(["fetch"])
    assert bad_item.value.path == (0,)
    with pytest.raises(ConditionError, match="must be a list"):
        parse_requires(42)


def test_the_issue_expression_parses_with_and_binding_tighter_than_or() -> None:
    cond = parse_expression("train=COMPLETED OR (fetch IN (FAILED) AND train=FINISHED)")
    assert cond == Or((
        Atom("train", ("COMPLETED",)),
        And((Atom("fetch", ("FAILED",)), Atom("train", ("FINISHED",)))),
    ))
    flat = parse_expression("a=COMPLETED OR b=COMPLETED AND c=COMPLETED")
    assert flat == Or((Atom("a", ("COMPLETED",)), And((Atom("b", ("COMPLETED",)), Atom("c", ("COMPLETED",))))))


def test_not_in_lists_and_case_insensitive_keywords() -> None:
    cond = parse_expression("not (a in (completed, Failed) and NOT b=FAILED)")
    assert cond == Not(And((Atom("a", ("COMPLETED", "FAILED")), Not(Atom("b", ("FAILED",))))))


def test_job_names_may_hold_dots_dashes_and_underscores() -> None:
    assert parse_expression("build-1.x_y=COMPLETED") == Atom("build-1.x_y", ("COMPLETED",))


def test_text_form_parses_back_to_the_same_condition() -> None:
    for text in ("a=COMPLETED", "NOT (a=FAILED OR b IN (COMPLETED, FAILED))",
                 "train=COMPLETED OR (fetch=FAILED AND train=FINISHED)", "NOT NOT a=COMPLETED"):
        cond = parse_expression(text)
        assert parse_expression(str(cond)) == cond, text


@pytest.mark.parametrize(("text", "column", "fragment"), [
    ("", 1, "empty"),
    ("   ", 1, "empty"),
    ("a=DONE", 3, "unknown job state 'DONE'"),
    ("a=COMPLETED AND", 16, "expected a job name, NOT or '('"),
    ("(a=COMPLETED", 1, "'(' at column 1 is never closed"),
    ("a=COMPLETED)", 12, "unbalanced ')'"),
    ("a=COMPLETED & b=FAILED", 13, "unexpected character '&'"),
    ("a COMPLETED", 3, "expected '=' or IN after job name 'a'"),
    ("a IN FAILED", 6, "expected '(' after IN"),
    ("a IN (FAILED COMPLETED)", 14, "expected ',' or ')' in the IN list"),
    ("a=COMPLETED b=FAILED", 13, "expected AND, OR or the end"),
    ("AND=COMPLETED", 1, "expected a job name"),
    ("a=", 3, "found the end of the expression"),
])
def test_expression_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as err:
        parse_expression(text)
    assert err.value.column == column, err.value.message
    assert fragment in err.value.message
    if column and "empty" not in fragment:
        assert f"column {column}" in err.value.message


def test_atoms_are_unknown_until_the_job_ends_and_finished_means_either_outcome() -> None:
    finished = Atom("a", ("FINISHED",))
    assert finished.evaluate({"a": None}) is None
    assert finished.evaluate({"a": "COMPLETED"}) is True
    assert finished.evaluate({"a": "FAILED"}) is True
    # A job that never ran did not finish.
    assert finished.evaluate({"a": "SKIPPED"}) is False
    assert finished.evaluate({"a": "CANCELED"}) is False
    assert Atom("a", ("FAILED",)).evaluate({"a": "COMPLETED"}) is False


def test_three_valued_logic_decides_as_soon_as_enough_is_known() -> None:
    either = parse_expression("a=COMPLETED OR b=COMPLETED")
    assert either.evaluate({"a": "COMPLETED", "b": None}) is True       # no need to wait for b
    assert either.evaluate({"a": "FAILED", "b": None}) is None
    assert either.evaluate({"a": "FAILED", "b": "FAILED"}) is False
    both = parse_expression("a=COMPLETED AND b=COMPLETED")
    assert both.evaluate({"a": "FAILED", "b": None}) is False           # can no longer hold: skip now
    assert both.evaluate({"a": "COMPLETED", "b": None}) is None
    assert parse_expression("NOT a=FAILED").evaluate({"a": None}) is None
    assert parse_expression("NOT a=FAILED").evaluate({"a": "COMPLETED"}) is True


def test_the_issue_expression_evaluates_as_documented() -> None:
    cond = parse_expression("train=COMPLETED OR (fetch IN (FAILED) AND train=FINISHED)")
    assert cond.evaluate({"train": "COMPLETED", "fetch": "COMPLETED"}) is True
    assert cond.evaluate({"train": "FAILED", "fetch": "FAILED"}) is True
    assert cond.evaluate({"train": "FAILED", "fetch": "COMPLETED"}) is False
    assert cond.evaluate({"train": "SKIPPED", "fetch": "FAILED"}) is False
    assert cond.evaluate({"train": None, "fetch": "FAILED"}) is None
