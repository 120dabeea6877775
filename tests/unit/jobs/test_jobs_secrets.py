"""Secret environment: sealed at rest with a 0600 key in CAPSA_HOME, refused when the key does not match."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from capsa.errors import FailedPrecondition, InvalidArgument
from capsa.jobs.secrets import KEY_FILE, SecretBox, validate_env_names

SECRETS = {"API_TOKEN": "hunter2-very-secret", "DB_PASSWORD": "correct horse"}


def test_sealed_secrets_open_again_and_hide_the_values(tmp_path: Path) -> None:
    box = SecretBox(tmp_path)
    token = box.seal(SECRETS)
    assert b"hunter2" not in token and b"correct horse" not in token and b"API_TOKEN" not in token
    assert SecretBox(tmp_path).open(token) == SECRETS


def test_the_key_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SecretBox(tmp_path).seal(SECRETS)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


def test_the_key_is_reused_not_replaced(tmp_path: Path) -> None:
    first = SecretBox(tmp_path).seal(SECRETS)
    key = (tmp_path / KEY_FILE).read_bytes()
    SecretBox(tmp_path).seal({"X": "y"})
    assert (tmp_path / KEY_FILE).read_bytes() == key
    assert SecretBox(tmp_path).open(first) == SECRETS


def test_a_replaced_key_cannot_open_old_secrets(tmp_path: Path) -> None:
    token = SecretBox(tmp_path).seal(SECRETS)
    (tmp_path / KEY_FILE).unlink()
    SecretBox(tmp_path).seal({"OTHER": "1"})   # a new key
    with pytest.raises(FailedPrecondition, match="does not match the key"):
        SecretBox(tmp_path).open(token)


def test_a_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    token = SecretBox(tmp_path).seal(SECRETS)
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(FailedPrecondition, match="is missing"):
        SecretBox(tmp_path).open(token)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    token = SecretBox(tmp_path).seal(SECRETS)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(FailedPrecondition, match="must be 0600"):
        SecretBox(tmp_path).open(token)


def test_a_name_given_as_plain_and_secret_is_refused_without_showing_values() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_env_names({"TOKEN": "plain-value"}, {"TOKEN": "secret-value"})
    assert "TOKEN" in str(info.value)
    assert "secret-value" not in str(info.value) and "plain-value" not in str(info.value)


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", ""])
def test_secret_names_must_be_shell_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="--secret-env"):
        validate_env_names({}, {name: "value"})


def test_plain_names_may_not_hold_equals_or_nul() -> None:
    with pytest.raises(InvalidArgument, match="-e"):
        validate_env_names({"A=B": "x"}, {})
    with pytest.raises(InvalidArgument, match="-e"):
        validate_env_names({"A": "x\x00y"}, {})
