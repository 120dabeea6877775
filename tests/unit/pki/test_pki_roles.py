"""Role: cumulative permission levels, ordered by rank rather than by name."""

from __future__ import annotations

import pytest

from capsa.errors import InvalidArgument
from capsa.pki import Role

ORDER = [Role.READER, Role.DEVELOPER, Role.MAINTAINER, Role.ADMIN]


@pytest.mark.parametrize("holder", ORDER)
@pytest.mark.parametrize("required", ORDER)
def test_a_role_allows_exactly_itself_and_every_lower_role(holder: Role, required: Role) -> None:
    assert holder.allows(required) is (ORDER.index(holder) >= ORDER.index(required))


def test_roles_sort_by_rank_not_alphabetically() -> None:
    assert sorted([Role.ADMIN, Role.READER, Role.MAINTAINER, Role.DEVELOPER]) == ORDER
    assert Role.ADMIN > Role.READER  # "admin" < "reader" as strings
    assert Role.DEVELOPER <= Role.DEVELOPER < Role.MAINTAINER


def test_ordering_against_a_plain_string_is_refused() -> None:
    with pytest.raises(TypeError):
        _ = Role.ADMIN > "reader"
    with pytest.raises(TypeError):
        Role.ADMIN.allows("reader")  # type: ignore[arg-type]


def test_role_is_its_string_value() -> None:
    assert str(Role.ADMIN) == "admin" and f"{Role.READER}" == "reader"
    assert Role.ADMIN == "admin"
    assert {"admin": 1}[Role.ADMIN] == 1 and {Role.ADMIN: 1}["admin"] == 1


def test_parse_accepts_any_case_and_rejects_unknown_names_listing_valid_ones() -> None:
    assert Role.parse(" Maintainer ") is Role.MAINTAINER
    with pytest.raises(InvalidArgument, match="reader, developer, maintainer, admin"):
        Role.parse("root")
