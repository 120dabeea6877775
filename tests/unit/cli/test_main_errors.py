"""main(): one line and the error's exit code; a closed pipe is 141, not click's 1; an unreachable daemon
behind a broken client config names the broken field."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from capsa.cli import main as cli_main
from capsa.errors import Unavailable
from capsa.pki import create_ca, issue_client_cert
from capsa.pki.roles import Role


@pytest.fixture
def extra_command() -> Iterator[click.Group]:
    added: list[str] = []

    def add(command: click.Command) -> None:
        cli_main.cli.add_command(command)
        added.append(command.name or "")

    yield add  # type: ignore[misc]
    for name in added:
        cli_main.cli.commands.pop(name, None)


def test_a_capsa_error_is_one_line_and_its_exit_code(extra_command, capsys: pytest.CaptureFixture[str]) -> None:
    @click.command("boom")
    def boom() -> None:
        raise Unavailable("cannot reach the capsa daemon at 127.0.0.1:1: refused")

    extra_command(boom)
    assert cli_main.main(["boom"]) == 7
    assert capsys.readouterr().err == "capsa: cannot reach the capsa daemon at 127.0.0.1:1: refused\n"


def test_a_reader_that_goes_away_ends_the_command_with_141(tmp_path: Path) -> None:
    """`capsa ... | head -1`: click alone would exit 1 and scripts under pipefail would see a failure."""
    child = (
        "import sys, click\n"
        "from capsa.cli import main as m\n"
        "@click.command('spew')\n"
        "def spew():\n"
        "    for i in range(200000):\n"
        "        click.echo(f'line {i}')\n"
        "m.cli.add_command(spew)\n"
        "sys.exit(m.main(['spew']))\n"
    )
    (tmp_path / "spew.py").write_text(child)
    script = f"{shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'spew.py'))} | head -1; " \
             "echo \"status=${PIPESTATUS[0]}\""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["line 0", "status=141"], result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_an_unreachable_daemon_with_a_broken_config_names_the_field(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path skips the key/certificate check; the failure it causes is explained by it."""
    ca = create_ca()
    one, two = (issue_client_cert(ca, name=n, role=Role.ADMIN) for n in ("one", "two"))
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump({"nodes": {"n": {"address": "127.0.0.1:1", "ca_pem": ca.cert_pem,
                                                     "cert_pem": one.cert_pem, "key_pem": two.key_pem}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSA_")}
    result = subprocess.run([sys.executable, "-m", "capsa", "--config", str(path), "ps"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"{path}: nodes['n'].key_pem:" in result.stderr and "does not belong" in result.stderr
