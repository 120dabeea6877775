"""The CLI's hot commands import only what they use (issue 11: a CLI that answers at once).

Guarded structurally, not by timing: each command runs in a fresh interpreter
against a real generated client.yaml, with the one RPC it makes answered in
process (``CapsaClient._call`` / ``stream_logs`` replaced), and must finish
with none of the heavy or server-side modules in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsa.config import write_bundle

FORBIDDEN = [
    "pydantic", "boto3", "botocore", "rich", "yaml", "cryptography",
    # (text_format is not listed: protobuf's own descriptor_pool imports it for every generated module.)
    "google.protobuf.json_format",
    "capsa.jobs", "capsa.runtime", "capsa.images", "capsa.state", "capsa.capsules", "capsa.fsm",
    "capsa.networks", "capsa.volumes", "capsa.workflows", "capsa.runtimes", "capsa.metrics",
    "capsa.logs", "capsa.snapshots", "capsa.pki", "capsa.daemon", "capsa.api.server",
    "capsa.config.server", "capsa.config.io", "capsa.config.bootstrap", "capsa.config.fields",
]

# Modules a command may need with some flags but not in the form measured by bench/bench_cli.py.
NOT_HERE = {
    ("ps",): ["capsa.selectors"],                      # only for --filter
    ("ps", "-a", "--json"): ["capsa.selectors"],
    ("run", "-d", "--", "/bin/true"): ["random"],      # only to space out retries
}

# Runs in the child: answer the command's RPC in process, run the real CLI, report sys.modules.
_CHILD = r"""
import json, sys
argv = json.loads(sys.argv[1])
if argv[:1] != ["--help"]:
    from capsa.api import client as api
    from capsa.api.gen.capsa.v1 import common_pb2, jobs_pb2 as pb

    job = pb.Job(id="0123456789abcdef", state="EXITED", ended=True, command=["/bin/true"])

    def fake_call(self, method, request, *, timeout=-1.0):
        name = type(request).__name__
        if name == "ListJobsRequest":
            return pb.ListJobsResponse(jobs=[job])
        if name == "Empty":
            return pb.VersionInfo(version="test", kernel="k", snapshotter="overlay")
        return job

    def fake_logs(self, job_id, *, follow=False, from_seq=0, **options):
        yield pb.LogChunk(seq=1, stream=1, data=b"hello\n")

    def fake_upload(self, chunks, *, finish=True):
        assert sum(len(c.data) for c in chunks) > 0   # the local walk really ran
        return pb.UploadResult(session="0" * 32)

    api.CapsaClient._call = fake_call
    api.CapsaClient.stream_logs = fake_logs
    api.CapsaClient.upload_files = fake_upload
from capsa.cli.main import main
code = main(argv)
sys.stdout.flush()
print("\n@@" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def client_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("bundle")
    write_bundle(bundle, address="127.0.0.1:7443")
    return bundle / "client-admin.yaml"


@pytest.mark.parametrize("argv", [
    ["ps"], ["ps", "-a", "--json"], ["run", "-d", "--", "/bin/true"], ["run", "--", "/bin/true"],
    ["run", "-d", "--upload", "@CONFIG@", "--", "/bin/true"],
    ["logs", "0123"], ["stop", "0123"], ["inspect", "0123"], ["version"], ["--help"], ["ps", "--help"],
], ids=lambda a: " ".join(a))
def test_hot_commands_import_nothing_heavy(client_config: Path, argv: list[str]) -> None:
    argv = [str(client_config) if a == "@CONFIG@" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSA_")}
    env["CAPSA_CONFIG"] = str(client_config)
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argv)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "@@" in result.stdout, result.stderr
    report = json.loads(result.stdout.rsplit("@@", 1)[1])
    assert report["code"] == 0, (result.stdout, result.stderr)
    forbidden = FORBIDDEN + NOT_HERE.get(tuple(argv), [])
    loaded = [m for m in report["modules"] if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert loaded == [], f"capsa {' '.join(argv)} imported {loaded}"
    if argv[0] != "--help" and "--help" not in argv:
        # The check is not vacuous: the command did reach the client and its RPC module.
        assert "capsa.api.client" in report["modules"] and "grpc" in report["modules"]


def test_help_does_not_even_import_the_client(client_config: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(["--help"])], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "CAPSA_CONFIG": str(client_config)})
    report = json.loads(result.stdout.rsplit("@@", 1)[1])
    assert not [m for m in report["modules"] if m == "grpc" or m.startswith(("grpc.", "capsa.api", "capsa.cli.jobs"))]
    assert "Commands:" in result.stdout and "ps " in result.stdout
