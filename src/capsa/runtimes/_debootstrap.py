"""debootstrap's first stage, run on the host into a directory capsa owns.

Why split debootstrap in two (docs/runtimes.md has the full trade-off): the *first* stage
only downloads packages, checks them against the Debian archive keyring (Release signature,
then every package's checksum) and unpacks them with ``dpkg-deb``/``tar`` — no code from the
packages runs. The *second* stage (``/debootstrap/debootstrap --second-stage``) runs the
packages' maintainer scripts; capsa runs it as an ordinary isolated build job whose root is
the tree made here. Running the second stage in a job needs no extra privilege (no mount,
no mknod), while running all of debootstrap inside a job would need CAP_SYS_ADMIN and
CAP_MKNOD in the host's user namespace — a host root shell by another name.

The first stage runs in a private mount namespace (``unshare --mount``) with a fixed
environment, and always with ``--force-check-gpg``: a mirror that cannot prove its packages
are Debian's is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from capsa.errors import Canceled, FailedPrecondition, Timeout
from capsa.runtimes.spec import DebootstrapBase

__all__ = ["KEYRING", "SECOND_STAGE", "first_stage", "host_architecture", "tidy_first_stage"]

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SECOND_STAGE = ("/debootstrap/debootstrap", "--second-stage")
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}


def host_architecture() -> str:
    """Debian's name for this machine's architecture (amd64, arm64, ...)."""
    dpkg = shutil.which("dpkg")
    if dpkg:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(machine, machine)


def first_stage(target: Path, base: DebootstrapBase, mirror: str, *, arch: str,
                log: Callable[[bytes], None], cancel: threading.Event, timeout_s: float = 1800.0) -> None:
    """Download, verify and unpack the packages of ``base`` into the empty directory ``target``."""
    debootstrap = shutil.which("debootstrap", path=_ENV["PATH"])
    if debootstrap is None:
        raise FailedPrecondition("debootstrap is not installed on the daemon's host (apt-get install debootstrap)")
    if not KEYRING.is_file():
        raise FailedPrecondition(f"the Debian archive keyring {KEYRING} is missing"
                                 " (apt-get install debian-archive-keyring)")
    unshare = shutil.which("unshare", path=_ENV["PATH"])
    argv = [debootstrap, "--foreign", f"--arch={arch}", f"--keyring={KEYRING}", "--force-check-gpg"]
    if base.variant != "-":
        argv.append(f"--variant={base.variant}")
    if base.include:
        argv.append("--include=" + ",".join(base.include))
    argv += [base.suite, str(target), mirror]
    if unshare is not None:
        argv = [unshare, "--mount", "--propagation", "private", "--", *argv]
    log(("$ " + " ".join(argv) + "\n").encode())
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=_ENV, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    killer = threading.Thread(target=_watch, args=(proc, cancel, deadline), daemon=True, name="debootstrap-watch")
    killer.start()
    tail: list[bytes] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        log(line)
        tail = [*tail[-19:], line]
    code = proc.wait()
    killer.join(timeout=5)
    if cancel.is_set():
        raise Canceled("debootstrap was interrupted")
    if time.monotonic() > deadline:
        raise Timeout(f"debootstrap's first stage took longer than {timeout_s:g}s")
    if code != 0:
        last = b"".join(tail).decode(errors="replace").strip().splitlines()[-3:]
        raise FailedPrecondition(f"debootstrap's first stage failed (exit {code}): {' | '.join(last)}")


def _watch(proc: subprocess.Popen[bytes], cancel: threading.Event, deadline: float) -> None:
    while proc.poll() is None:
        if cancel.is_set() or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        cancel.wait(0.2)


def tidy_first_stage(target: Path) -> None:
    """Undo what the first stage takes from the host or from a container guess.

    debootstrap copies the host's ``/etc/resolv.conf`` and ``/etc/hostname`` (host facts that
    do not belong in an image) and, when it believes it runs in Docker, makes ``/proc`` a
    symlink to ``/proc`` — a job's root needs a real directory to mount its /proc on.
    """
    for rel in ("etc/resolv.conf", "etc/hostname"):
        path = target / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    proc = target / "proc"
    if proc.is_symlink():
        proc.unlink()
    if not proc.exists():
        proc.mkdir(mode=0o555)
        os.chmod(proc, 0o555)
