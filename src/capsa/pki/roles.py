"""Client roles: cumulative permission levels carried in a client certificate's OU."""

from __future__ import annotations

from enum import StrEnum

from capsa.errors import InvalidArgument

__all__ = ["NodeRole", "Principal", "Role"]


class Role(StrEnum):
    """A client's permission level; each role includes every lower one.

    Ordering compares rank (``Role.ADMIN > Role.READER``), never the string
    values: plain ``str`` ordering would rank "admin" below "reader".
    """

    READER = "reader"
    DEVELOPER = "developer"
    MAINTAINER = "maintainer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: Role) -> bool:
        """True when a holder of this role may do what ``required`` may do."""
        if isinstance(required, NodeRole):
            return False   # node-to-node calls are not a user permission, however high
        if not isinstance(required, Role):
            raise TypeError(f"Role.allows() needs a Role, got {type(required).__name__}")
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value`` (case-insensitive), or InvalidArgument listing the valid names."""
        try:
            return cls(value.strip().lower())
        except (ValueError, AttributeError):
            names = ", ".join(r.value for r in cls)
            raise InvalidArgument(f"unknown role {value!r}; valid roles are: {names}") from None

    def _rank_of(self, other: object) -> int:
        if not isinstance(other, Role):
            raise TypeError(f"cannot order Role against {type(other).__name__}")
        return other.rank

    def __lt__(self, other: object) -> bool:
        return self.rank < self._rank_of(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= self._rank_of(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > self._rank_of(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= self._rank_of(other)

    # Enum members are hashable by identity of value; keep str's hash so that
    # Role("admin") and "admin" still look each other up in dicts.
    __hash__ = str.__hash__


_RANKS: dict[Role, int] = {role: rank for rank, role in enumerate(Role)}


class NodeRole(StrEnum):
    """The role of a capsa node calling another node of its pool (capsa.cluster proxying).

    Outside the user hierarchy on purpose: a node certificate may call the node-to-node RPCs and
    nothing else, and no user role, admin included, may call those (they skip the user's own check,
    which the serving node already made).
    """

    NODE = "node"

    def allows(self, required: Role | NodeRole) -> bool:
        return required is NodeRole.NODE


Principal = Role | NodeRole
"""Whatever a client certificate's OU may name: a user role or the node role."""
