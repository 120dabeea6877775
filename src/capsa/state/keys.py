"""Keys users type or send: id prefixes of records, and client-generated request ids.

* :func:`resolve_id_prefix` is the one way a job or workflow id is looked up from
  what a user typed (a full id or any unambiguous prefix of its hex digits).
* :func:`check_request_id` validates an idempotency key (``RunRequest.request_id``,
  ``WorkflowService.submit(request_id=...)``, ...). A component stores it in a
  column with a partial unique index (``WHERE request_id != ''``), so the database,
  not a check-then-insert in Python, decides which of two submissions with the same
  key created the record, across threads, processes and kill -9.
"""

from __future__ import annotations

import re

from capsa.errors import InvalidArgument, NotFound
from capsa.state.db import Database

__all__ = ["MAX_REQUEST_ID", "check_request_id", "resolve_id_prefix"]

MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]+$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{1,32}$")
_TABLES = frozenset({"jobs", "workflows"})   # the records addressed by hexadecimal ids


def check_request_id(request_id: str) -> str:
    """``request_id`` unchanged when it is empty (no deduplication) or a valid key; InvalidArgument otherwise."""
    if request_id and (len(request_id) > MAX_REQUEST_ID or not _REQUEST_ID.match(request_id)):
        shown = request_id if len(request_id) <= 40 else request_id[:40] + "…"
        raise InvalidArgument(f"request id {shown!r}: at most {MAX_REQUEST_ID} characters among"
                              " letters, digits and . _ : -")
    return request_id


def resolve_id_prefix(db: Database, table: str, id_or_prefix: str, *, noun: str) -> str:
    """The full id in ``table`` that ``id_or_prefix`` names; NotFound, or InvalidArgument when ambiguous."""
    if table not in _TABLES:
        raise ValueError(f"no id-prefix lookup for table {table!r}")
    key = id_or_prefix.strip().lower()
    if not _HEX_PREFIX.match(key):
        raise InvalidArgument(f"invalid {noun} id {id_or_prefix!r}: expected hexadecimal characters")
    # A range instead of LIKE: the primary key's index serves it (LIKE is case-insensitive, so it cannot).
    upper = key[:-1] + chr(ord(key[-1]) + 1)
    rows = db.query(f"SELECT id FROM {table} WHERE id >= ? AND id < ? LIMIT 2", (key, upper))
    if not rows:
        raise NotFound(f"no such {noun}: {id_or_prefix}")
    if len(rows) > 1:
        raise InvalidArgument(f"{noun} id prefix {id_or_prefix!r} is ambiguous: it matches several {noun}s")
    return str(rows[0]["id"])
