"""The ``capsa`` program ends a client command with os._exit once its output is flushed (issue 11: a CLI that
answers at once), and lets the commands that serve (daemon, scheduler, web) end the ordinary way."""

from __future__ import annotations

import subprocess
import sys

# Registers an atexit hook (it runs only on an orderly interpreter exit), adds a command, runs entry().
_CHILD = r"""
import atexit, os, sys, click
from capsa.cli import main as m
atexit.register(lambda: os.write(2, b"@@teardown\n"))
@click.command(sys.argv[1])
def spew():
    for i in range(50000):
        click.echo(f"line {i}")
    click.echo("last line", err=True, nl=False)   # no newline: still buffered when main() returns
    return 3
m.cli.add_command(spew)
sys.argv = ["capsa", sys.argv[1]]
m.entry()
"""


def _run(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, name], capture_output=True, text=True, timeout=60)


def test_a_client_command_skips_teardown_and_loses_no_output() -> None:
    result = _run("spew")
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert len(lines) == 50000 and lines[-1] == "line 49999"
    assert result.stderr == "last line"   # flushed before os._exit, and no teardown hook ran


def test_a_serving_command_exits_the_ordinary_way() -> None:
    result = _run("daemon")   # stands in for the real one: the name decides
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1] == "line 49999"
    assert result.stderr == "last line@@teardown\n"
