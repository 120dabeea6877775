"""`capsa run --image` never starts a job on a damaged root: it repairs it, or with --pull never refuses."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_helpers import ImageDaemon, image_daemon, layer_dir, query

from tests.fixtures.images import whiteout_image, write_oci_layout


@pytest.fixture
def d(tmp_path: Path) -> Iterator[ImageDaemon]:
    with image_daemon(tmp_path / "home") as daemon:
        yield daemon


def test_a_removed_layer_directory_is_rebuilt_before_the_job_starts(d: ImageDaemon, tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "layout", {"wo": whiteout_image()})
    ref = f"oci:{tmp_path / 'layout'}:wo"
    d.cli_ok("image", "pull", ref)
    chain = json.loads(query(d.home, "SELECT chain_json FROM images")[0]["chain_json"])
    shutil.rmtree(layer_dir(d.home, chain[1]))  # behind capsa's back

    # the image's Entrypoint is /bin/cat: the arguments are the files it prints
    refused = d.cli("run", "--image", ref, "--pull", "never", "--", "/data/keep.txt")
    assert refused.returncode != 0
    assert "is damaged" in refused.stderr.decode() and "storage is gone" in refused.stderr.decode()

    ran = d.cli("run", "--image", ref, "--", "/data/keep.txt", "/etc/hello.txt")
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout.decode() == "keep\nhello from layer 3\n"
    assert layer_dir(d.home, chain[1]).is_dir()
    repairs = query(d.home, "SELECT message FROM fsm_events WHERE kind = 'repair'")
    assert any("storage is gone" in r["message"] for r in repairs)
