"""One error vocabulary for every layer of capsa.

Every failure capsa reports is a :class:`CapsaError`. Subclasses say *what kind*
of failure it is, so each layer can decide "retry or abort" without parsing
strings (the FSM engine retries :attr:`CapsaError.retryable` errors with backoff
and aborts the rest at once), the API maps them to gRPC status codes, and the
CLI maps them to one-line messages and stable exit codes in one place.

Raise the most specific class that fits, with a message that names what was
wrong (the entry, the limit, the reference) so that a user never needs a
traceback.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "AlreadyExists",
    "CapsaError",
    "Canceled",
    "ChecksumMismatch",
    "Conflict",
    "DeviceExistsError",
    "DeviceNotFoundError",
    "FailedPrecondition",
    "InvalidArgument",
    "LimitExceeded",
    "NotFound",
    "PermissionDenied",
    "PoolFullError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "UnsafeArchive",
    "error_from_code",
    "from_os_error",
    "is_disk_full",
    "is_retryable",
]


class CapsaError(Exception):
    """Base of every error capsa raises on purpose.

    ``code`` is a stable, machine-readable name (also sent over the API);
    ``exit_code`` is what the CLI exits with; ``retryable`` tells the FSM engine
    whether trying again can help.
    """

    code = "internal"
    exit_code = 1
    retryable = False

    def __init__(self, message: str, *, detail: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = dict(detail or {})

    def __str__(self) -> str:  # the message alone, never a repr
        return self.message


class InvalidArgument(CapsaError):
    """The request itself is malformed (bad flag, bad YAML, bad reference)."""

    code = "invalid_argument"
    exit_code = 2


class NotFound(CapsaError):
    code = "not_found"
    exit_code = 3


class AlreadyExists(CapsaError):
    code = "already_exists"
    exit_code = 4


class Conflict(CapsaError):
    """The request contradicts current state (e.g. removing an image in use)."""

    code = "conflict"
    exit_code = 4


class FailedPrecondition(CapsaError):
    code = "failed_precondition"
    exit_code = 5


class PermissionDenied(CapsaError):
    """Authenticated, but the role does not allow this call."""

    code = "permission_denied"
    exit_code = 6


class Unauthorized(CapsaError):
    """Not authenticated: bad, missing or expired credentials."""

    code = "unauthenticated"
    exit_code = 6


class Unavailable(CapsaError):
    """A dependency (daemon, registry, S3, disk) is temporarily unavailable."""

    code = "unavailable"
    exit_code = 7
    retryable = True


class Timeout(CapsaError):
    code = "deadline_exceeded"
    exit_code = 124
    retryable = True


class Canceled(CapsaError):
    code = "canceled"
    exit_code = 130


class Unsupported(CapsaError):
    """The host kernel or configuration lacks a needed feature."""

    code = "unimplemented"
    exit_code = 8


class LimitExceeded(CapsaError):
    """A configured limit would be exceeded; the message names limit and entry."""

    code = "resource_exhausted"
    exit_code = 9


class ChecksumMismatch(CapsaError):
    code = "checksum_mismatch"
    exit_code = 10


class UnsafeArchive(CapsaError):
    """An archive entry tries to escape, or is otherwise hostile; names the entry."""

    code = "unsafe_archive"
    exit_code = 11


class DeviceExistsError(CapsaError):
    """device-mapper: the device already exists (image ADR-003)."""

    code = "device_exists"
    exit_code = 12


class DeviceNotFoundError(CapsaError):
    """device-mapper: the device does not exist (image ADR-003)."""

    code = "device_not_found"
    exit_code = 12


class PoolFullError(CapsaError):
    """device-mapper: the thin pool is out of data or metadata space (image ADR-003)."""

    code = "pool_full"
    exit_code = 12


_BY_CODE: dict[str, type[CapsaError]] = {}
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, CapsaError):
        _BY_CODE.setdefault(_cls.code, _cls)
_BY_CODE["internal"] = CapsaError


def error_from_code(code: str, message: str) -> CapsaError:
    """Rebuild a typed error from its wire ``code`` (used by the API client)."""
    return _BY_CODE.get(code, CapsaError)(message)


def is_retryable(exc: BaseException) -> bool:
    """True when trying again may succeed.

    Non-capsa exceptions count as retryable only when they are plain I/O or
    connection hiccups; anything else is a bug and must not loop forever.
    """
    if isinstance(exc, CapsaError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, InterruptedError))


# errnos that mean "the filesystem has no room for this" (quota included): a limit, not a bug.
_SPACE_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` saying the filesystem (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS


def from_os_error(exc: OSError, path: str | os.PathLike[str] | None = None, *, what: str = "") -> CapsaError:
    """The typed error for an ``OSError`` met while working on ``path``, with a message naming it.

    ENOSPC/EDQUOT become :class:`LimitExceeded` (gRPC RESOURCE_EXHAUSTED, exit 9),
    so a full disk reads ``<what>: no space left on device writing /the/path``
    instead of ``internal error: OSError: [Errno 28]``; ENOENT becomes
    :class:`NotFound`, EROFS :class:`FailedPrecondition`, EIO :class:`Unavailable`
    (the disk may come back); anything else stays an internal error, still
    naming the path. ``detail`` carries ``path`` and ``errno`` for callers.
    Use as ``raise from_os_error(exc, path, what="capsule create") from exc``.
    """
    where = path if path is not None else exc.filename
    where_text = os.fsdecode(where) if where is not None else "(unknown path)"
    reason = exc.strerror or str(exc)
    prefix = f"{what}: " if what else ""
    detail: dict[str, object] = {"path": where_text, "errno": exc.errno or 0}
    if exc.errno in _SPACE_ERRNOS:
        kind = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
        return LimitExceeded(f"{prefix}{kind} writing {where_text}; free space there and retry", detail=detail)
    if exc.errno == errno.ENOENT:
        return NotFound(f"{prefix}{where_text}: {reason}", detail=detail)
    if exc.errno == errno.EROFS:
        return FailedPrecondition(f"{prefix}{where_text} is on a read-only filesystem", detail=detail)
    if exc.errno == errno.EIO:
        return Unavailable(f"{prefix}I/O error on {where_text}", detail=detail)
    return CapsaError(f"{prefix}{where_text}: {reason}", detail=detail)
