"""Where capsa keeps its state: one home directory, every path in it named here once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capsa.errors import InvalidArgument

if TYPE_CHECKING:
    from capsa.pki.roles import Role

__all__ = ["DEFAULT_HOME", "HomeLayout", "capsa_home"]

DEFAULT_HOME = Path("/var/lib/capsa")

# Job ids become directory names: keep them to one safe path component.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def capsa_home() -> Path:
    """``$CAPSA_HOME`` (made absolute), or /var/lib/capsa when unset or empty."""
    value = os.environ.get("CAPSA_HOME", "").strip()
    return Path(value).expanduser().absolute() if value else DEFAULT_HOME


@dataclass(frozen=True)
class HomeLayout:
    """Names of every file and directory under a capsa home.

    Pure naming: nothing here touches the disk except :meth:`create_dirs`.
    """

    home: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())

    # ---- configuration
    @property
    def server_config(self) -> Path:
        return self.home / "server.yaml"

    @property
    def client_config(self) -> Path:
        """The local admin client's config (a copy of client-admin.yaml at bootstrap)."""
        return self.home / "client.yaml"

    def client_config_for(self, role: Role | str) -> Path:
        """client-<role>.yaml, written at bootstrap for each role."""
        # Imported here: capsa.pki pulls in cryptography, which the CLI's path must not load.
        from capsa.pki.roles import Role

        return self.home / f"client-{Role.parse(str(role)).value}.yaml"

    @property
    def bootstrap_staging(self) -> Path:
        """Where a first start builds the certificate bundle before moving it in place."""
        return self.home / ".bootstrap"

    @property
    def bootstrap_lock(self) -> Path:
        """Held while a start checks or creates the bundle, so two starts cannot race."""
        return self.home / ".bootstrap.lock"

    # ---- state
    @property
    def db(self) -> Path:
        return self.home / "capsa.db"

    @property
    def run(self) -> Path:
        """Sockets and pid files of the running daemon and its helpers."""
        return self.home / "run"

    @property
    def pid_file(self) -> Path:
        return self.run / "capsa.pid"

    def socket(self, name: str) -> Path:
        """run/<name>.sock, e.g. ``socket("launcher")``."""
        return self.run / f"{_component(name, 'socket name')}.sock"

    @property
    def jobs(self) -> Path:
        return self.home / "jobs"

    def job_dir(self, job_id: str) -> Path:
        """jobs/<id>/: a job's private working state (rootfs, uploads, scratch)."""
        return self.jobs / _component(job_id, "job id")

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def job_logs(self, job_id: str) -> Path:
        """logs/<id>/: a job's persisted log segments, kept after the job dir is cleaned."""
        return self.logs / _component(job_id, "job id")

    @property
    def content(self) -> Path:
        """Content store: blobs by digest, shared by images and capsules."""
        return self.home / "content"

    @property
    def snapshots(self) -> Path:
        return self.home / "snapshots"

    @property
    def capsules(self) -> Path:
        return self.home / "capsules"

    @property
    def volumes(self) -> Path:
        return self.home / "volumes"

    @property
    def networks(self) -> Path:
        return self.home / "networks"

    @property
    def tmp(self) -> Path:
        """Scratch on the same filesystem as the state, so finished work can be renamed into place."""
        return self.home / "tmp"

    def directories(self) -> list[Path]:
        """Every directory a daemon expects to exist, home first."""
        return [
            self.home,
            self.run,
            self.jobs,
            self.logs,
            self.content,
            self.snapshots,
            self.capsules,
            self.volumes,
            self.networks,
            self.tmp,
        ]

    def create_dirs(self) -> None:
        """Create the standard directories (0700; existing ones keep their mode)."""
        for path in self.directories():
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _component(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidArgument(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_', '.', '-' (not starting with '.' or '-')"
        )
    return value
