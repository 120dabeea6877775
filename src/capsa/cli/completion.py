"""Shell completion: `capsa completion bash|zsh|fish` prints the script; the completers ask the daemon.

Commands, subcommands, flags and choices come from click's completion support. Job ids and names,
image references and capsule versions come from the daemon, with a short deadline
(:data:`TIMEOUT_S`): when it cannot be reached, or the client config is missing, a completer
offers nothing and prints nothing, so the shell never shows an error or hangs.

Bash splits words at ``:`` (``COMP_WORDBREAKS``), which would cut ``host:5000/app:1`` into pieces:
capsa's bash script hands the daemon the whole command line (``COMP_LINE`` up to ``COMP_POINT``)
instead of bash's words, and strips from each answer the part before the last word break, as
bash-completion's ``__ltrim_colon_completions`` does.

Loaded only when completing or printing a script; the completers are referenced by the commands'
arguments but import nothing until a shell asks.
"""

from __future__ import annotations

import os
from typing import Any

import click

__all__ = ["COMMANDS", "complete_capsules", "complete_images", "complete_jobs", "install"]

TIMEOUT_S = 1.0
_LIMIT = 500   # newest jobs offered


def _client(ctx: click.Context) -> Any:
    """A client with a short deadline, from the command line's --config/--node; None if there is none."""
    root = ctx.find_root()
    try:
        from capsa.api.client import CapsaClient
        from capsa.config.client import find_client_config, load_client_config

        config = load_client_config(find_client_config(root.params.get("config")), verify=False)
        return CapsaClient(config.select(root.params.get("node")), timeout=TIMEOUT_S)
    except Exception:
        return None


def _ask(ctx: click.Context, fetch: Any) -> list[Any]:
    client = _client(ctx)
    if client is None:
        return []
    try:
        return list(fetch(client))
    except Exception:   # unreachable, refused, too slow: a completion offers nothing rather than an error
        return []
    finally:
        client.close()


def complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Job ids (12 characters, as `ps` shows them) and names, newest first."""
    from click.shell_completion import CompletionItem

    out: list[CompletionItem] = []
    for job in _ask(ctx, lambda c: c.list_jobs(all=True, limit=_LIMIT)):
        about = f"{job.state} {' '.join(job.command)}"[:60]
        if job.id.startswith(incomplete):
            out.append(CompletionItem(job.id[:max(12, len(incomplete))], help=about))
        if job.name and job.name.startswith(incomplete):
            out.append(CompletionItem(job.name, help=about))
    return out


def complete_images(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Stored image references."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(img.ref, help=img.digest[:19]) for img in _ask(ctx, lambda c: c.list_images())
            if img.ref.startswith(incomplete)]


def complete_capsules(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Capsule versions as NAME@VERSION."""
    from click.shell_completion import CompletionItem

    out = []
    for capsule in _ask(ctx, lambda c: c.list_capsules()):
        ref = f"{capsule.name}@{capsule.version}"
        if ref.startswith(incomplete):
            out.append(CompletionItem(ref))
    return out


# -- the scripts ----------------------------------------------------------------------------------------
_BASH = r"""%(complete_func)s() {
    local IFS=$'\n'
    local response
    response=$(env COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" COMP_WORDS="${COMP_WORDS[*]}" \
        COMP_CWORD="$COMP_CWORD" COMP_WORDBREAKS="$COMP_WORDBREAKS" %(complete_var)s=bash_complete $1 2>/dev/null)
    for completion in $response; do
        IFS=',' read type value <<< "$completion"
        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=("$value")
        fi
    done
    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""


def install() -> None:
    """Make click use capsa's bash script and word handling (called before click answers a shell)."""
    from click.shell_completion import BashComplete, add_completion_class, split_arg_string

    class CapsaBash(BashComplete):
        source_template = _BASH
        _trim = 0

        def get_completion_args(self) -> tuple[list[str], str]:
            line = os.environ.get("COMP_LINE")
            if line is None:
                return super().get_completion_args()
            line = line[:int(os.environ.get("COMP_POINT", len(line)))]
            words = split_arg_string(line)
            if not line or line[-1].isspace() or not words:
                args, incomplete = words[1:], ""
            else:
                args, incomplete = words[1:-1], words[-1]
            breaks = os.environ.get("COMP_WORDBREAKS", " \t\n\"'><=;|&(:")
            # bash replaces only what follows the last word break in the word being completed
            self._trim = max((incomplete.rfind(c) for c in breaks if not c.isspace()), default=-1) + 1
            return args, incomplete

        def format_completion(self, item: Any) -> str:
            value = item.value[self._trim:] if item.type == "plain" else item.value
            return f"{item.type},{value}"

    add_completion_class(CapsaBash, "bash")


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish (see `capsa completion --help`).

    \b
    bash:  echo 'eval "$(capsa completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(capsa completion zsh)"' >> ~/.zshrc
    fish:  capsa completion fish > ~/.config/fish/completions/capsa.fish
    """
    from click.shell_completion import get_completion_class

    from capsa.cli.main import cli

    install()
    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "capsa", "_CAPSA_COMPLETE").source(), nl=False)


COMMANDS = [completion]
