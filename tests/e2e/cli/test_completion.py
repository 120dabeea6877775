"""Shell completion through the generated scripts, against a real daemon.

bash runs the very script `capsa completion bash` prints and calls its completion function the way
bash does on TAB (COMP_LINE, COMP_POINT, COMP_WORDS, COMP_CWORD set); zsh and fish are not installed
here, so their protocol (what their scripts send and read back) is driven directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures.daemon import RunningDaemon, running_daemon
from tests.fixtures.images import RegistryImages

CAPSA = str(Path(sys.executable).parent / "capsa")

_BASH = r"""
source <("$CAPSA" completion bash)
line="$1"
COMP_LINE="$line"; COMP_POINT=${#line}
# bash's own word splitting, COMP_WORDBREAKS (":" and "=") included
read -ra COMP_WORDS <<< "${line//:/ : }"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMPREPLY=()
_capsa_completion capsa "${COMP_WORDS[COMP_CWORD]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    with running_daemon(tmp_path_factory.mktemp("completion") / "home") as daemon:
        yield daemon


def env_for(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPSA_", "_CAPSA"))}
    env["CAPSA"] = CAPSA
    env["PATH"] = f"{Path(CAPSA).parent}:{env.get('PATH', '/usr/bin:/bin')}"   # the shell runs `capsa` by name
    env["CAPSA_CONFIG"] = str(config)
    return env


def bash_complete(line: str, config: Path) -> tuple[list[str], str]:
    bash = shutil.which("bash")
    assert bash is not None
    res = subprocess.run([bash, "-c", _BASH, "bash", line], env=env_for(config), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    return [w for w in res.stdout.split("\n") if w], res.stderr


def protocol(shell: str, words: str, cword: str, config: Path) -> str:
    """What the shell's script sends: zsh the words and the index of the current one, fish the command line
    up to the cursor (`commandline -cp`) and the current token (`commandline -t`)."""
    env = {**env_for(config), "_CAPSA_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    return subprocess.run([CAPSA], env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def test_each_shell_gets_its_script(d: RunningDaemon) -> None:
    scripts = {shell: d.cli("completion", shell, check=True).stdout.decode() for shell in ("bash", "zsh", "fish")}
    assert "complete -o nosort -F _capsa_completion capsa" in scripts["bash"]
    assert scripts["zsh"].startswith("#compdef capsa") and "_CAPSA_COMPLETE=zsh_complete" in scripts["zsh"]
    assert "complete --no-files --command capsa" in scripts["fish"]
    assert "unsupported" in d.cli("completion", "tcsh").stderr.decode().lower() or \
        "invalid value" in d.cli("completion", "tcsh").stderr.decode().lower()


def test_bash_completes_commands_flags_jobs_and_names(d: RunningDaemon) -> None:
    config = d.home / "client-admin.yaml"
    job = d.cli("run", "-d", "--name", "nightly-report", "--", "/bin/true", check=True).stdout.decode().strip()
    assert bash_complete("capsa lo", config)[0] == ["logs"]
    assert bash_complete("capsa image s", config)[0] == ["save"]
    assert "--image" in bash_complete("capsa run --ima", config)[0]
    words, err = bash_complete("capsa logs ", config)
    assert job[:12] in words and "nightly-report" in words and err == ""
    assert bash_complete("capsa stop night", config)[0] == ["nightly-report"]
    assert bash_complete(f"capsa inspect {job[:5]}", config)[0] == [job[:12]]
    assert bash_complete("capsa wait nosuchprefix", config)[0] == []


def test_bash_completes_image_refs_across_colons(d: RunningDaemon, registry_images: RegistryImages) -> None:
    config = d.home / "client-admin.yaml"
    ref = registry_images.refs["busybox"]          # 127.0.0.1:PORT/capsa-test/busybox:1
    d.cli("image", "pull", ref, check=True)
    host, port = registry_images.server.host.split(":")
    # bash replaces only what follows the last ':' of the word: the answer is the rest of the reference
    assert bash_complete(f"capsa image inspect {host}:{port}/capsa-test/bu", config)[0] == \
        [ref.split(":", 1)[1]]
    assert bash_complete(f"capsa image inspect {host}:{port}/capsa-test/busybox:", config)[0] == ["1"]
    assert bash_complete(f"capsa run --image {host}", config)[0] == [ref]


def test_zsh_and_fish_get_names_with_descriptions(d: RunningDaemon, tmp_path: Path) -> None:
    config = d.home / "client-admin.yaml"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    d.cli("capsule", "create", "weights@3", str(tmp_path / "data"), check=True)
    d.cli("run", "-d", "--name", "zsh-job", "--", "/bin/true", check=True)
    zsh = protocol("zsh", "capsa logs zsh", "2", config).split("\n")
    assert zsh[:2] == ["plain", "zsh-job"] and zsh[2].endswith(" /bin/true")   # type, value, description
    fish = protocol("fish", "capsa capsule inspect wei", "wei", config)
    assert fish.strip() == "plain,weights@3"


def test_an_unreachable_daemon_or_no_config_completes_nothing_quickly_and_silently(tmp_path: Path,
                                                                                   d: RunningDaemon) -> None:
    broken = tmp_path / "client.yaml"
    data = yaml.safe_load((d.home / "client-admin.yaml").read_text())
    for node in data["nodes"].values():
        node["address"] = "127.0.0.1:1"
    broken.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    words, err = bash_complete("capsa logs ", broken)
    assert words == [] and err == ""
    assert time.monotonic() - started < 5
    assert bash_complete("capsa logs ", tmp_path / "missing.yaml") == ([], "")
    assert bash_complete("capsa lo", tmp_path / "missing.yaml")[0] == ["logs"]   # static parts still work
