"""The dashboard's files ship in the wheel (package-data), and the vendored JS is what VENDOR.md records."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from pathlib import Path

import capsa.web

ROOT = Path(__file__).resolve().parents[3]
WEB = Path(capsa.web.__file__).parent


def test_every_template_and_static_file_matches_a_package_data_pattern() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["capsa"]
    files = [p for sub in ("templates", "static") for p in (WEB / sub).rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        relative = path.relative_to(WEB.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/")
                   for pattern in patterns), f"{relative} would be missing from the wheel"


def test_vendored_files_match_their_recorded_checksums_and_pages_load_only_them() -> None:
    vendor = WEB / "static" / "vendor"
    rows = re.findall(r"\| (\S+\.(?:js|css)) \| [^|]+ \| ([0-9a-f]{64}) \|", (vendor / "VENDOR.md").read_text())
    assert {name for name, _ in rows} == {p.name for p in vendor.iterdir() if p.suffix in (".js", ".css")}
    for name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    for template in (WEB / "templates").glob("*.html"):
        for src in re.findall(r'(?:src|href)="(https?:[^"]*|//[^"]*)"', template.read_text()):
            raise AssertionError(f"{template.name} loads {src} from elsewhere")


def test_the_cli_does_not_import_the_web_stack_until_capsa_web_runs() -> None:
    import subprocess
    import sys

    code = ("import sys, capsa.cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'jinja2') "
            "or m.startswith('capsa.web')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
