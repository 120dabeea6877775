"""Runtime specs: what parses, and every way a spec is refused (all problems at once, with lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capsa.errors import InvalidArgument
from capsa.runtimes import (
    PackagesStep,
    RunStep,
    host_mirror,
    load_spec,
    parse_runtime_name,
    parse_spec,
    step_key,
)

REPO = Path(__file__).resolve().parents[3]

MINIMAL = """\
name: tool
version: "1"
base: {image: "oci:/srv/layout:busybox"}
steps:
  - run: "mkdir -p /opt/tool"
"""


def problems(text: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse_spec(text, source="t.yaml")
    return str(info.value)


def test_minimal_spec_parses_with_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.ref == "tool@1"
    assert spec.base.kind == "image" and spec.base.image == "oci:/srv/layout:busybox"
    assert spec.steps == (RunStep(run="mkdir -p /opt/tool"),)
    assert spec.env == {} and spec.entrypoint is None and spec.cmd is None


def test_shipped_python_runtime_spec_is_valid() -> None:
    spec = load_spec(REPO / "runtimes" / "python-3.11.yaml")
    assert spec.ref == "python-3.11@1"
    deb = spec.base.debootstrap
    assert deb is not None and (deb.suite, deb.variant, deb.mirror) == ("bookworm", "minbase", "")
    assert spec.steps == (PackagesStep(packages=("python3", "python3-pip", "python3-venv", "ca-certificates")),)


def test_debootstrap_base_takes_defaults() -> None:
    spec = parse_spec('name: d\nversion: "1"\nbase: {debootstrap: {}}\n')
    deb = spec.base.debootstrap
    assert deb is not None and (deb.suite, deb.variant, deb.include) == ("bookworm", "minbase", ())


def test_integer_version_is_accepted_as_text() -> None:
    assert parse_spec(MINIMAL.replace('version: "1"', "version: 7")).version == "7"


def test_float_version_is_refused_because_yaml_loses_digits() -> None:
    assert "YAML reads 3.10 as the number 3.1" in problems(MINIMAL.replace('version: "1"', "version: 3.10"))


def test_unknown_key_is_reported_with_its_line() -> None:
    text = MINIMAL + "entrypont: [python3]\n"
    assert "line 6: entrypont: unknown key" in problems(text)


def test_every_problem_is_reported_at_once() -> None:
    text = 'name: Bad_Name\nversion: "1"\nbase: {image: x}\nsteps:\n  - packages: ["python3; rm -rf /"]\n'
    out = problems(text)
    assert "line 1: name:" in out
    assert "line 5: steps[0].packages: not Debian package names: 'python3; rm -rf /'" in out


def test_base_must_be_exactly_one_kind() -> None:
    assert "give exactly one of image, debootstrap or runtime (got image, runtime)" in problems(
        MINIMAL.replace('base: {image: "oci:/srv/layout:busybox"}', "base: {image: x, runtime: a@1}"))
    assert "give exactly one of image, debootstrap or runtime" in problems(MINIMAL.replace(
        'base: {image: "oci:/srv/layout:busybox"}', "base: {}"))


def test_runtime_base_needs_a_version() -> None:
    assert "give the version too" in problems(MINIMAL.replace(
        'base: {image: "oci:/srv/layout:busybox"}', "base: {runtime: python-3.11}"))


def test_a_step_has_exactly_one_key() -> None:
    out = problems(MINIMAL.replace('  - run: "mkdir -p /opt/tool"', '  - {run: "true", packages: [curl]}'))
    assert "a step is a mapping with exactly one key, packages or run (got ['packages', 'run'])" in out


def test_debootstrap_mirror_and_suite_are_checked() -> None:
    out = problems('name: d\nversion: "1"\nbase:\n  debootstrap: {suite: "bookworm;x", mirror: "ftp://m"}\n')
    assert "base.debootstrap.suite" in out and "base.debootstrap.mirror" in out


def test_env_names_and_workdir_are_checked() -> None:
    out = problems(MINIMAL + 'env: {"1BAD": x}\nworkdir: relative\n')
    assert "env: invalid variable names: '1BAD'" in out
    assert "workdir: 'relative' must be an absolute path" in out


def test_not_yaml_and_not_a_mapping_are_refused() -> None:
    assert "not valid YAML" in problems("name: [unclosed\n")
    assert "a runtime spec is a YAML mapping" in problems("- just\n- a list\n")


def test_packages_step_runs_apt_get_with_only_the_named_packages() -> None:
    script = PackagesStep(packages=("python3", "ca-certificates")).argv()[2]
    assert "apt-get install -y -q --no-install-recommends python3 ca-certificates\n" in script
    assert "rm -rf /var/lib/apt/lists/*" in script


def test_spec_hash_follows_the_content() -> None:
    a = parse_spec(MINIMAL)
    assert a.spec_hash() == parse_spec(MINIMAL + "\n# a comment changes nothing\n").spec_hash()
    assert a.spec_hash() != parse_spec(MINIMAL.replace("/opt/tool", "/opt/other")).spec_hash()


def test_step_keys_depend_on_parent_step_and_salt() -> None:
    step = {"run": "true"}
    key = step_key("sha256:" + "a" * 64, step)
    assert key.startswith("sha256:") and len(key) == 71
    assert key == step_key("sha256:" + "a" * 64, step)
    assert key != step_key("sha256:" + "b" * 64, step)
    assert key != step_key("sha256:" + "a" * 64, {"run": "false"})
    assert key != step_key("sha256:" + "a" * 64, step, "forced-run")


@pytest.mark.parametrize(("text", "expected"), [("python-3.11", ("python-3.11", None)),
                                                ("python-3.11@1", ("python-3.11", "1"))])
def test_runtime_names(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_runtime_name(text) == expected


@pytest.mark.parametrize("text", ["Python", "a@", "@1", "a@b@c", "a b"])
def test_bad_runtime_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_runtime_name(text)


def test_host_mirror_reads_deb822_sources_and_skips_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert host_mirror("bookworm", etc_apt=tmp_path) == "http://mirror.example/debian"


def test_host_mirror_reads_one_line_lists_with_options(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert host_mirror("bookworm", etc_apt=tmp_path) == "http://one.example/debian"


def test_host_mirror_falls_back_to_debian(tmp_path: Path) -> None:
    assert host_mirror("bookworm", etc_apt=tmp_path) == "http://deb.debian.org/debian"
