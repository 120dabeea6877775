"""LazyGroup: the static command table is the real one, and --help reads the same as eagerly loaded."""

from __future__ import annotations

import importlib

import click
from click.testing import CliRunner

from capsa.cli import main as cli_main

MODULES = ["jobs", "run_features", "images", "runtimes", "capsules", "workflows", "networks", "stats", "admin", "web",
           "cluster", "interactive", "files", "housekeeping", "watch", "completion"]


def _real_commands() -> dict[str, click.Command]:
    real: dict[str, click.Command] = {}
    for name in MODULES:
        for command in importlib.import_module(f"capsa.cli.{name}").COMMANDS:
            real[command.name] = command
    return real


def test_the_table_lists_every_command_with_its_module_and_help() -> None:
    real = _real_commands()
    assert sorted(cli_main.COMMANDS) == sorted(real)
    for name, (module, attr, short) in cli_main.COMMANDS.items():
        command = getattr(importlib.import_module(f"capsa.cli.{module}"), attr)
        assert command is real[name], name
        assert command.get_short_help_str(limit=1000) == short, name


def test_help_from_the_table_equals_help_from_the_loaded_commands() -> None:
    lazy = cli_main.LazyGroup(name="capsa", params=list(cli_main.cli.params), help=cli_main.cli.help,
                              context_settings={"help_option_names": ["-h", "--help"]})
    eager = click.Group(name="capsa", params=list(cli_main.cli.params), help=cli_main.cli.help,
                        commands=_real_commands(), context_settings={"help_option_names": ["-h", "--help"]})
    for width in (60, 80, 200):
        lazy_out = CliRunner().invoke(lazy, ["--help"], terminal_width=width).output
        eager_out = CliRunner().invoke(eager, ["--help"], terminal_width=width).output
        assert lazy_out == eager_out
        assert "Commands:" in lazy_out and "workflow" in lazy_out


def test_a_command_is_imported_when_invoked_and_unknown_ones_fail_as_before() -> None:
    result = CliRunner().invoke(cli_main.cli, ["volume", "--help"])
    assert result.exit_code == 0 and "Manage volumes" in result.output
    result = CliRunner().invoke(cli_main.cli, ["nosuch"])
    assert result.exit_code == 2 and "No such command 'nosuch'" in result.output
