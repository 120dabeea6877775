"""capsa.jobs.execs: -u parsing (the audit trail and the process are exercised end to end in e2e)."""

from __future__ import annotations

import pytest

from capsa.errors import InvalidArgument
from capsa.jobs.execs import parse_user


@pytest.mark.parametrize(("user", "ids"), [("", (-1, -1)), ("root", (0, 0)), ("1000", (1000, 1000)),
                                           ("1000:50", (1000, 50)), ("0:0", (0, 0))])
def test_users_are_numeric_ids_or_root(user: str, ids: tuple[int, int]) -> None:
    assert parse_user(user) == ids


@pytest.mark.parametrize("user", ["alice", "1000:", ":5", "-1", "1:2:3", "99999999999", "4294967295"])
def test_other_users_are_refused_clearly(user: str) -> None:
    with pytest.raises(InvalidArgument, match="user"):
        parse_user(user)
