"""Secret environment variables: validation, and encryption at rest for scheduled jobs.

A job started now gets its ``--secret-env`` values straight from the RunJob
request into its spec; they live only in the daemon's memory for the start call
and are never written anywhere (jobs table, logs, ``inspect``). A daemon restart
cannot re-deliver them, which does not matter: the job already has them.

A *scheduled* job must keep them until its start time, possibly across daemon
restarts, so they are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key
in ``CAPSA_HOME/secrets.key`` (mode 0600, created on first use) and the
ciphertext is stored with the schedule; the row is deleted when the job starts
or is canceled. Whoever can read the key file can read those secrets: it is as
sensitive as the daemon's TLS key next to it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from capsa.errors import FailedPrecondition, InvalidArgument

__all__ = ["KEY_FILE", "SecretBox", "validate_env_names"]

KEY_FILE = "secrets.key"


def validate_env_names(env: dict[str, str], secret_env: dict[str, str]) -> None:
    """Names must be portable shell names and a name may not be both plain and secret.

    Messages name the variable, never its value.
    """
    from capsa.jobs.spec_fields import check_env, check_secret_env  # the checks workflow YAML runs too

    check_env("-e", env)
    check_secret_env("--secret-env", secret_env)
    both = sorted(set(env) & set(secret_env))
    if both:
        raise InvalidArgument(f"{', '.join(both)}: given both as -e and --secret-env; give each name once")


class SecretBox:
    """Seals a job's secret environment with the node's key; opening needs the same key file."""

    def __init__(self, home: Path) -> None:
        self.key_path = Path(home) / KEY_FILE

    def _key(self, *, create: bool) -> bytes:
        try:
            return self._read_key()
        except FileNotFoundError:
            if not create:
                raise FailedPrecondition(
                    f"the secrets key {self.key_path} is missing: secrets sealed with it cannot be opened") from None
        key = Fernet.generate_key()
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # created by a concurrent first use: use that one
            return self._read_key()
        try:
            os.fchmod(fd, 0o600)  # the umask must not widen or narrow it
            os.write(fd, key)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.key_path)
            raise
        os.close(fd)
        return key

    def _read_key(self) -> bytes:
        fd = os.open(self.key_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                raise FailedPrecondition(
                    f"{self.key_path} is readable by others (mode {st.st_mode & 0o777:o}); it must be 0600")
            return os.read(fd, 4096).strip()
        finally:
            os.close(fd)

    def seal(self, secrets: dict[str, str]) -> bytes:
        return Fernet(self._key(create=True)).encrypt(json.dumps(secrets, sort_keys=True).encode())

    def open(self, token: bytes) -> dict[str, str]:
        try:
            data = Fernet(self._key(create=False)).decrypt(bytes(token))
        except InvalidToken:
            raise FailedPrecondition(
                f"the sealed secret environment does not match the key in {self.key_path}"
                " (was the key replaced?)") from None
        value = json.loads(data)
        return {str(k): str(v) for k, v in value.items()}
