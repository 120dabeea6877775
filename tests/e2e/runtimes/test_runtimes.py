"""Runtimes end to end: build from a busybox image in isolated build jobs, run in them, rebuild, remove.

One daemon for the module; each test builds its own runtime (named after the test) so the tests
stay independent. The busybox base comes from the OCI layout of tests/fixtures/images.py.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.images import LayoutImages


def write_spec(tmp_path: Path, name: str, base: str, *steps: str, version: str = "1", extra: str = "") -> Path:
    lines = [f"name: {name}", f'version: "{version}"', f"base: {base}", "steps:"]
    lines += [f"  - run: {json.dumps(step)}" for step in steps]
    path = tmp_path / f"{name}-{version}.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def busybox_base(images: LayoutImages) -> str:
    return json.dumps({"image": images.ref("busybox")})


def build(daemon: RunningDaemon, spec: Path, *args: str, role: str = "admin") -> tuple[int, str, str]:
    r = daemon.cli("runtime", "build", str(spec), *args, role=role)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def runtimes(daemon: RunningDaemon) -> dict[str, dict[str, object]]:
    out = daemon.cli("runtime", "ls", "--json", check=True).stdout
    return {r["ref"]: r for r in json.loads(out)}


TOOL_STEP = "mkdir -p /opt/tool && echo hi > /opt/tool/x && echo step-ran"


@pytest.fixture(scope="module")
def tool(daemon: RunningDaemon, test_images: LayoutImages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = write_spec(tmp_path_factory.mktemp("specs"), "tool", busybox_base(test_images), TOOL_STEP,
                      extra='env: {TOOL_HOME: /opt/tool}\ncmd: ["/bin/cat", "/opt/tool/x"]\n')
    code, out, err = build(daemon, spec)
    assert code == 0, err
    return spec


def test_build_streams_the_build_jobs_output_and_registers_the_runtime(daemon: RunningDaemon, tool: Path) -> None:
    rt = runtimes(daemon)["tool@1"]
    assert rt["image_ref"] == "runtime:tool@1"
    assert str(rt["base"]).startswith("image oci:")
    assert len(rt["layers"]) == 2  # type: ignore[arg-type]   # busybox + the step
    history = daemon.cli("runtime", "inspect", "tool", check=True).stdout
    assert json.loads(history)["builds"][0]["state"] == "succeeded"


def test_build_output_reaches_the_cli(daemon: RunningDaemon, test_images: LayoutImages, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "talker", busybox_base(test_images), "echo hello-from-the-build-job; echo err >&2")
    code, out, err = build(daemon, spec)
    assert code == 0, err
    assert "==> step 1/1: run: echo hello-from-the-build-job" in out
    assert "hello-from-the-build-job\n" in out and "err\n" in out
    assert "built: runtime talker@1 sha256:" in out


def test_a_job_in_the_runtime_sees_the_runtime_and_not_the_host(daemon: RunningDaemon, tool: Path) -> None:
    r = daemon.cli("run", "--runtime", "tool@1", "--", "/bin/sh", "-c",
                   "cat /opt/tool/x; echo TOOL_HOME=$TOOL_HOME; ls /usr/bin 2>&1; ls /bin | wc -l;"
                   " echo ok > /work/f && cat /work/f; grep -c ' /work ' /proc/self/mountinfo")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "hi" and lines[1] == "TOOL_HOME=/opt/tool"
    assert "No such file or directory" in lines[2]          # the host's /usr/bin is not there
    assert len(list(Path("/usr/bin").iterdir())) > 50       # ... though the host has one
    assert int(lines[3]) < 40                               # /bin: busybox's applets only
    assert lines[4:] == ["ok", "1"]                         # /work is still the job's bind mount


def test_runtime_cmd_and_name_without_version(daemon: RunningDaemon, tool: Path) -> None:
    r = daemon.cli("run", "--runtime", "tool")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "hi\n"


def test_unknown_runtime_is_refused(daemon: RunningDaemon) -> None:
    r = daemon.cli("run", "--runtime", "nope@1", "--", "/bin/true")
    assert r.returncode == 3 and "no runtime nope@1" in r.stderr.decode()


def test_a_build_step_cannot_write_to_the_host(daemon: RunningDaemon, test_images: LayoutImages,
                                               tmp_path: Path) -> None:
    marker = Path(f"/host-marker-{secrets.token_hex(4)}")
    spec = write_spec(tmp_path, "writer", busybox_base(test_images), f"echo pwned > {marker} && cat {marker}")
    code, out, err = build(daemon, spec)
    assert code == 0, err
    assert not marker.exists()                              # the host is unchanged
    r = daemon.cli("run", "--runtime", "writer@1", "--", "/bin/cat", str(marker))
    assert r.stdout == b"pwned\n"                           # the write landed in the runtime


def test_a_build_step_cannot_mount(daemon: RunningDaemon, test_images: LayoutImages, tmp_path: Path) -> None:
    before = Path("/proc/self/mountinfo").read_text().count("\n")
    spec = write_spec(tmp_path, "mounter", busybox_base(test_images),
                      "mkdir -p /mnt && /bin/busybox mount -t tmpfs none /mnt")
    code, out, err = build(daemon, spec)
    assert code != 0
    assert "permission denied" in out.lower() or "operation not permitted" in out.lower()
    assert "step-1 failed (FAILED, exit code" in err
    assert "mounter@1" not in runtimes(daemon)
    assert Path("/proc/self/mountinfo").read_text().count("\n") == before


def test_rebuild_is_up_to_date_and_force_runs_every_step_again(daemon: RunningDaemon, tool: Path) -> None:
    digest = runtimes(daemon)["tool@1"]["digest"]
    code, out, err = build(daemon, tool)
    assert code == 0, err
    assert "up to date: runtime tool@1" in out and "step-ran" not in out
    code, out, err = build(daemon, tool, "--force")
    assert code == 0, err
    assert "step-ran" in out and "(cached)" not in out
    rebuilt = runtimes(daemon)["tool@1"]
    assert rebuilt["spec_hash"] and len(rebuilt["layers"]) == 2  # type: ignore[arg-type]
    r = daemon.cli("run", "--runtime", "tool@1", "--", "/bin/cat", "/opt/tool/x")
    assert r.stdout == b"hi\n"
    assert digest  # the old build's id, replaced by the forced one
    builds = json.loads(daemon.cli("runtime", "inspect", "tool@1", check=True).stdout)["builds"]
    assert [b["state"] for b in builds[:3]] == ["succeeded", "handed_off", "succeeded"]


def test_changing_a_spec_without_a_new_version_is_refused(daemon: RunningDaemon, test_images: LayoutImages,
                                                          tmp_path: Path) -> None:
    first = write_spec(tmp_path, "pinned", busybox_base(test_images), "echo one > /one")
    assert build(daemon, first)[0] == 0
    changed = write_spec(tmp_path / "..", "pinned", busybox_base(test_images), "echo two > /two")
    code, _, err = build(daemon, changed)
    assert code == 4 and "built from a different spec" in err
    bumped = write_spec(tmp_path, "pinned", busybox_base(test_images), "echo two > /two", version="2")
    assert build(daemon, bumped)[0] == 0
    assert {"pinned@1", "pinned@2"} <= set(runtimes(daemon))


def test_a_runtime_can_be_the_base_of_another(daemon: RunningDaemon, tool: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "tool-plus", json.dumps({"runtime": "tool@1"}), "echo more > /opt/tool/y")
    code, out, err = build(daemon, spec)
    assert code == 0, err
    r = daemon.cli("run", "--runtime", "tool-plus@1", "--", "/bin/cat", "/opt/tool/x", "/opt/tool/y")
    assert r.stdout == b"hi\nmore\n"
    assert len(runtimes(daemon)["tool-plus@1"]["layers"]) == 3  # type: ignore[arg-type]


def test_rm_is_refused_while_a_job_runs_in_the_runtime(daemon: RunningDaemon, test_images: LayoutImages,
                                                       tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "busy", busybox_base(test_images), "true")
    assert build(daemon, spec)[0] == 0
    job = daemon.cli("run", "-d", "--runtime", "busy@1", "--", "/bin/sleep", "60", check=True).stdout.decode().strip()
    r = daemon.cli("runtime", "rm", "busy@1")
    assert r.returncode == 4 and "in use by running job" in r.stderr.decode()
    assert "busy@1" in runtimes(daemon)
    daemon.cli("stop", "-t", "1", job, check=True)
    daemon.cli("rm", job, check=True)
    r = daemon.cli("runtime", "rm", "busy@1")
    assert r.returncode == 0, r.stderr.decode()
    assert "busy@1" not in runtimes(daemon)


def test_roles_readers_list_maintainers_build(daemon: RunningDaemon, test_images: LayoutImages,
                                              tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "roles", busybox_base(test_images), "true")
    code, _, err = build(daemon, spec, role="developer")
    assert code == 6, err
    assert daemon.cli("runtime", "ls", role="reader").returncode == 0
    assert daemon.cli("runtime", "rm", "tool@1", role="developer").returncode == 6


def test_a_workflow_job_runs_in_a_runtime(daemon: RunningDaemon, tool: Path, tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: in-runtime\njobs:\n  show:\n    runtime: tool@1\n    command: /bin/cat\n"
                    "    args: [/opt/tool/x]\n  unknown:\n    runtime: nope@1\n    command: /bin/true\n")
    refused = daemon.cli("workflow", "run", str(path), "--wait")
    assert refused.returncode == 2 and "unknown runtime 'nope@1'" in refused.stderr.decode()
    path.write_text(path.read_text().split("  unknown:")[0])
    res = daemon.cli("workflow", "run", str(path), "--wait")
    assert res.returncode == 0, res.stderr.decode()
    jobs = json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout)
    job = next(j for j in jobs if j["name"] == "in-runtime/show")
    assert job["image"] == "runtime:tool@1" and job["state"] == "COMPLETED"
    assert daemon.cli("logs", job["id"], check=True).stdout == b"hi\n"


def test_a_runtime_is_a_real_oci_image(daemon: RunningDaemon, test_images: LayoutImages, tmp_path: Path) -> None:
    """Its manifest, config and layers, copied out of the content store into an OCI layout, pull back
    through capsa's defensive unpacker (and skopeo reads them): deletions travel as OCI whiteouts."""
    spec = write_spec(tmp_path, "exported", busybox_base(test_images),
                      "rm /etc/group && mkdir -p /opt/tool && echo hi > /opt/tool/x")
    assert build(daemon, spec)[0] == 0
    rt = runtimes(daemon)["exported@1"]
    blobs = daemon.home / "content" / "blobs" / "sha256"
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    manifest = json.loads((blobs / str(rt["digest"]).removeprefix("sha256:")).read_bytes())
    for desc in [manifest["config"], *manifest["layers"]]:
        hexd = desc["digest"].removeprefix("sha256:")
        (layout / "blobs" / "sha256" / hexd).write_bytes((blobs / hexd).read_bytes())
    (layout / "blobs" / "sha256" / str(rt["digest"]).removeprefix("sha256:")).write_bytes(
        (blobs / str(rt["digest"]).removeprefix("sha256:")).read_bytes())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    size = (blobs / str(rt["digest"]).removeprefix("sha256:")).stat().st_size
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": rt["digest"], "size": size,
         "annotations": {"org.opencontainers.image.ref.name": "rt"}}]}))
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert config["config"]["Labels"]["org.capsa.runtime.name"] == "exported"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 2
    r = daemon.cli("run", "--image", f"oci:{layout}:rt", "--", "/bin/sh", "-c", "cat /opt/tool/x; ls /etc")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"hi\npasswd\n"                   # /etc/group's deletion survived the round trip
    skopeo = shutil.which("skopeo")
    if skopeo:
        inspected = subprocess.run([skopeo, "inspect", f"oci:{layout}:rt"], capture_output=True, timeout=60)
        assert inspected.returncode == 0, inspected.stderr.decode()
        assert json.loads(inspected.stdout)["Layers"] == [la["digest"] for la in manifest["layers"]]


def test_rm_keeps_the_base_image_it_was_built_on(daemon: RunningDaemon, test_images: LayoutImages,
                                                 tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "on-whiteout", json.dumps({"image": test_images.ref("whiteout")}), "true")
    assert build(daemon, spec)[0] == 0
    r = daemon.cli("runtime", "rm", "on-whiteout@1")
    assert r.returncode == 0, r.stderr.decode()
    r = daemon.cli("run", "--image", test_images.ref("whiteout"), "--pull", "never")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"added in layer 3\n"
