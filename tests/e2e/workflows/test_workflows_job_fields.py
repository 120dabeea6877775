"""Workflow jobs take what `capsa run` takes, through the durable runner: an image, a capsule, a volume, an
isolated network, env and secret env, uploads, an enforced memory limit and a timeout; and a workflow naming
a capsule, volume or network that does not exist is refused with the YAML line."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from workflows_helpers import jobs_of, steps, wait_workflow

from capsa.cli.capsules import tar_chunks
from tests.fixtures.daemon import RunningDaemon
from tests.fixtures.images import LayoutImages

HOG = "b = b'x' * (200 * 1024 * 1024); print(len(b))"


def _logs(client, job_id: str) -> str:
    return b"".join(c.data for c in client.stream_logs(job_id) if c.stream == 1).decode()


def test_one_workflow_uses_every_kind_of_job_field(daemon: RunningDaemon, test_images: LayoutImages,
                                                   tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    volume, capsule = f"wfv{tag}", f"wfdata-{tag}"
    tree = tmp_path / "capsule"
    tree.mkdir()
    (tree / "README").write_text(f"capsule {tag}\n")
    (tmp_path / "input.txt").write_text(f"uploaded {tag}\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.sh").write_text("echo from-script\n")
    path = tmp_path / "fields.yaml"
    path.write_text(f"""\
name: fields
jobs:
  imaged:
    image: {test_images.ref("busybox")}
    command: /bin/sh
    args: ["-c", 'echo "img-$GREETING-$TOKEN"; cat /work/input.txt; sh /work/scripts/run.sh']
    env: {{GREETING: hi}}
    secret_env: {{TOKEN: s3cret}}
    uploads: [input.txt, scripts]
    network: isolated
  capsuled:
    command: /bin/sh
    args: ["-c", "cat /capsules/{capsule}/README && echo written > /volumes/{volume}/marker"]
    capsules: ["{capsule}@1.0.0"]
    volumes: ["{volume}"]
  reader:
    command: /bin/cat
    args: [/data/marker]
    volumes: ["{volume}:/data:ro"]
    requires: [{{capsuled: COMPLETED}}]
  hog:
    command: python3
    args: ["-c", "{HOG}"]
    resources: {{max_memory: 64}}
  slow:
    command: /bin/sleep
    args: ["30"]
    timeout: 1s
""")
    with daemon.client() as client:
        client.create_volume(volume, "16MB")
        client.create_capsule(capsule, "1.0.0", tar_chunks(tree))
        try:
            res = daemon.cli("workflow", "run", str(path))
            assert res.returncode == 0, res.stderr.decode()
            workflow = wait_workflow(client, res.stdout.decode().split()[0], timeout=45)
            by_name = steps(workflow)
            outcome = {n: (s.state, s.reason) for n, s in by_name.items()}
            assert outcome == {"imaged": ("COMPLETED", ""), "capsuled": ("COMPLETED", ""),
                               "reader": ("COMPLETED", ""), "hog": ("FAILED", "OOM killed"),
                               "slow": ("FAILED", "timeout")}, outcome
            assert workflow.state == "FAILED"
            imaged = client.get_job(by_name["imaged"].job_id)
            assert _logs(client, imaged.id) == f"img-hi-s3cret\nuploaded {tag}\nfrom-script\n"
            assert imaged.image == test_images.ref("busybox") and imaged.network == "isolated"
            assert list(imaged.secret_env_keys) == ["TOKEN"] and dict(imaged.env).get("GREETING") == "hi"
            assert _logs(client, by_name["capsuled"].job_id) == f"capsule {tag}\n"
            assert _logs(client, by_name["reader"].job_id) == "written\n"
            hog = client.get_job(by_name["hog"].job_id)
            assert hog.exit_code == 137 and int(hog.resources.max_memory_mb) == 64
            assert client.get_job(by_name["slow"].job_id).state == "TIMEOUT"
            # The workflow ended: the uploads it kept for its jobs are gone.
            assert not (daemon.home / "workflows" / "uploads" / workflow.id).exists()
        finally:
            for job in jobs_of(client, workflow.id) if "workflow" in locals() else []:
                client.delete_job(job.id, force=True)
            client.remove_volume(volume)


def test_missing_capsules_volumes_and_networks_are_refused_with_their_lines(daemon: RunningDaemon,
                                                                            tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    path.write_text("""\
name: missing
jobs:
  a:
    command: /bin/true
    capsules: ["nosuch@1.0.0"]
    volumes: [nosuchvol]
    network: nosuchnet
    uploads: [not-there.txt]
""")
    before = len(json.loads(daemon.cli("workflow", "ls", "--json", check=True).stdout))
    res = daemon.cli("workflow", "run", str(path))
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "line 5: jobs.a.capsules[0]: unknown capsule 'nosuch@1.0.0'" in err
    assert "line 6: jobs.a.volumes[0]: unknown volume 'nosuchvol'" in err
    assert "line 7: jobs.a.network: unknown network 'nosuchnet'" in err
    assert f"line 8: jobs.a.uploads[0]: upload 'not-there.txt' does not exist ({tmp_path}/not-there.txt)" in err
    assert len(json.loads(daemon.cli("workflow", "ls", "--json", check=True).stdout)) == before
