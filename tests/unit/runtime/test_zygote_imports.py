"""The zygote holds only what job starts need: every module it imports is address space that each
job's execve tears down (ADR-0018). Guarded structurally, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The daemon's side, the image backends and SQLite: none of it is used between clone and execve.
FORBIDDEN = ["pyseccomp", "capsa.runtime.security.seccomp", "grpc", "sqlite3", "capsa.state", "capsa.runtime.client", "capsa.snapshots.btrfs",
             "capsa.snapshots.devmapper", "capsa.snapshots.overlay", "capsa.jobs", "capsa.images", "capsa.api"]


def _modules_after(statement: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import json, sys; {statement}; print(json.dumps(list(sys.modules)))"],
                         capture_output=True, check=True, text=True).stdout
    return set(json.loads(out))


def test_the_zygote_imports_none_of_the_daemons_side() -> None:
    loaded = _modules_after("import capsa.runtime.zygote")
    assert "capsa.runtime.stage2" in loaded    # the measured import really ran
    assert sorted(loaded & set(FORBIDDEN)) == []


def test_the_lazy_names_still_resolve() -> None:
    from capsa.runtime import SupervisorClient, ensure_supervisor
    from capsa.runtime.client import SupervisorClient as direct
    from capsa.snapshots import (
        BtrfsSnapshotter,
        DevmapperSnapshotter,
        OverlaySnapshotter,
        thin_pool_available,
    )

    assert SupervisorClient is direct and callable(ensure_supervisor) and callable(thin_pool_available)
    assert {c.__module__ for c in (BtrfsSnapshotter, DevmapperSnapshotter, OverlaySnapshotter)} == {
        "capsa.snapshots.btrfs", "capsa.snapshots.devmapper.snapshotter", "capsa.snapshots.overlay"}


@pytest.mark.parametrize("package", ["capsa.runtime", "capsa.snapshots"])
def test_an_unknown_name_is_still_an_attribute_error(package: str) -> None:
    import importlib

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = importlib.import_module(package).no_such_name


def test_profiles_compiled_apart_are_the_same_programs_and_ready_to_install() -> None:
    from capsa.runtime.security import bpf
    from capsa.runtime.security.seccomp import compile_profile

    programs = bpf.compile_apart(bpf.PROFILE_NAMES)
    assert set(programs) == set(bpf.PROFILE_NAMES)
    assert programs[bpf.UNCONFINED] == b""
    for name, program in programs.items():
        assert program == compile_profile(name)
        if program:
            assert len(program) % 8 == 0 and program in bpf._PREPARED   # the job only makes the prctl


def test_a_profile_that_cannot_be_compiled_fails_with_the_childs_reason() -> None:
    from capsa.errors import InvalidArgument
    from capsa.runtime.security import bpf

    with pytest.raises(InvalidArgument, match="no seccomp profile named 'nonesuch'"):
        bpf.compile_apart(["default", "nonesuch"])
