"""Mount targets inside an image root resolve inside the job's root, never on the host.

An image may ship symlinks such as ``/proc -> /etc`` or ``/data -> /root``. Before
pivot_root, stage two works with host paths, so following such a link when creating or
mounting on a target would create directories on (or mount over) the host.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.fixtures.images import ImageConfig, Layer, TarBuilder, TestImage, busybox_layer, write_oci_layout


@pytest.fixture(scope="module")
def hostile_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    marker = f"capsa-escape-{secrets.token_hex(6)}"
    config = ImageConfig.model_validate({"architecture": "amd64", "os": "linux",
                                         "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}})
    # Absolute symlinks are legal in images (they resolve inside the root at run time).
    evil = TarBuilder().symlink("data", "/root").symlink("proc", "/etc").symlink("capsules", "/var").build()
    climbing = TarBuilder().symlink("rel", "../../../../../../root").build()
    root = tmp_path_factory.mktemp("hostile-layout")
    write_oci_layout(root, {
        "evil": TestImage(name="hostile", layers=(Layer(busybox_layer(), "gzip"), Layer(evil, "none")), config=config),
        "climbing": TestImage(name="climbing", layers=(Layer(busybox_layer(), "gzip"), Layer(climbing, "none")),
                              config=config),
    })
    return root, marker


def test_volume_target_through_an_absolute_image_symlink_stays_inside_the_job(daemon, hostile_layout) -> None:
    layout, marker = hostile_layout
    name = f"v{secrets.token_hex(4)}"
    daemon.cli("volume", "create", name, "--size", "16MB", check=True)
    try:
        result = daemon.cli("run", "--image", f"oci:{layout}:evil", "-v", f"{name}:/data/{marker}", "--",
                            "/bin/sh", "-c", f"ls -d /data/{marker} && ls /proc/self/status")
        assert result.returncode == 0, result.stderr.decode()
        assert not Path(f"/root/{marker}").exists(), "the job created a directory in the host's /root"
        for name_ in ("/etc", "/var"):
            assert not Path(name_, "self").exists()
    finally:
        daemon.cli("rm", "-f", *[j for j in daemon.cli("ps", "-aq").stdout.decode().split()])
        daemon.cli("volume", "rm", name)


def test_an_image_with_a_symlink_climbing_out_of_the_root_is_refused(daemon, hostile_layout) -> None:
    layout, _ = hostile_layout
    result = daemon.cli("image", "pull", f"oci:{layout}:climbing")
    assert result.returncode == 11, result.stderr.decode()
    assert b"rel" in result.stderr and b"climbs above the root" in result.stderr
