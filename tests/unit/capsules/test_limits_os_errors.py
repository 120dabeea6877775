"""errors.from_os_error: a full disk is a limit naming the path (exit 9), never an internal error."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from capsa.capsules._fs import staging_dir
from capsa.errors import (
    CapsaError,
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    Unavailable,
    from_os_error,
    is_disk_full,
)


@pytest.mark.parametrize(
    ("code", "cls", "text"),
    [
        (errno.ENOSPC, LimitExceeded, "no space left on device writing /srv/x"),
        (errno.EDQUOT, LimitExceeded, "disk quota exceeded writing /srv/x"),
        (errno.ENOENT, NotFound, "/srv/x"),
        (errno.EROFS, FailedPrecondition, "read-only filesystem"),
        (errno.EIO, Unavailable, "I/O error on /srv/x"),
        (errno.EPERM, CapsaError, "/srv/x"),
    ],
)
def test_mapping_names_the_path(code: int, cls: type[CapsaError], text: str) -> None:
    err = from_os_error(OSError(code, "whatever"), Path("/srv/x"), what="capsule create")
    assert type(err) is cls
    assert str(err).startswith("capsule create: ") and text in str(err)
    assert err.detail == {"path": "/srv/x", "errno": code}


def test_exit_code_and_filename_fallback() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/var/lib/capsa/logs/x")
    err = from_os_error(exc)
    assert err.exit_code == 9 and err.code == "resource_exhausted"
    assert "/var/lib/capsa/logs/x" in str(err)
    assert is_disk_full(exc) and not is_disk_full(OSError(errno.EIO, "x")) and not is_disk_full(ValueError())


def test_staging_maps_a_full_disk_in_the_callers_block_and_cleans_up(tmp_path: Path) -> None:
    seen: list[Path] = []
    full = r"capsule staging: no space left on device writing .*upload\.tar"
    with pytest.raises(LimitExceeded, match=full), staging_dir(tmp_path) as staging:
        seen.append(staging)
        raise OSError(errno.ENOSPC, "No space left on device", str(staging / "upload.tar"))
    assert not seen[0].exists()
    with pytest.raises(OSError, match="other"), staging_dir(tmp_path):
        raise OSError(errno.EBADF, "other")
