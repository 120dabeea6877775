"""A daemon stand-in for the crash/resume tests: runs fsm machines until SIGKILLed.

Usage: python _fsm_crash_worker.py DB MARKERS MODE COUNT MAX_ATTEMPTS
  MODE start   start COUNT runs of crash.demo, print "started", wait for them
  MODE resume  resume unfinished runs, print "started", wait for them
  MODE poison  start one crash.poison run (its second transition SIGKILLs this process)
Also imported by the tests, for the machine declarations and the expected results.

The transitions write marker files and sleep in small steps so that a kill lands inside
them; each checks real state first (idempotency), and logs every execution.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from capsa.fsm import Context, Engine, Machine, RetryPolicy
from capsa.state.db import Database

POISON_ENV = "CAPSA_FSM_TEST_POISON"
_rng = random.Random()


def payload(resource: str) -> bytes:
    return (f"{resource}:" * 500).encode()


def expected_output(resource: str) -> dict[str, Any]:
    return {"resource": resource, "digest": hashlib.sha256(payload(resource)).hexdigest(), "ledger": True}


def _nap() -> None:
    for _ in range(_rng.randint(1, 4)):
        time.sleep(_rng.uniform(0.002, 0.01))


def _log(markers: Path, resource: str, transition: str) -> None:
    fd = os.open(markers / f"{resource}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{transition}\n".encode())
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    markers, resource = Path(request["markers"]), request["resource"]
    _log(markers, resource, "write")
    target = markers / f"{resource}.a"
    _nap()
    if not (target.exists() and target.read_bytes() == payload(resource)):
        _write_atomic(target, payload(resource))
    _nap()
    return {"markers": str(markers), "resource": resource, "path": str(target)}


def digest(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    markers, resource = Path(request["markers"]), request["resource"]
    _log(markers, resource, "digest")
    value = hashlib.sha256(Path(request["path"]).read_bytes()).hexdigest()
    _nap()
    _write_atomic(markers / f"{resource}.b", value.encode())
    _nap()
    return {"markers": str(markers), "resource": resource, "digest": value}


def ledger(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    markers, resource = Path(request["markers"]), request["resource"]
    _log(markers, resource, "ledger")
    book = markers / "ledger.txt"
    line = f"{resource} {request['digest']}\n"
    _nap()
    # not idempotent by nature (an append), made idempotent by checking what is already there
    if not (book.exists() and line in book.read_text().splitlines(keepends=True)):
        fd = os.open(book, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one small O_APPEND write: never torn by a kill
        finally:
            os.close(fd)
    _nap()
    return {"resource": resource, "digest": request["digest"], "ledger": True}


def poison(ctx: Context, request: Any) -> Any:
    if os.environ.get(POISON_ENV) == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("the poison transition ran outside its subprocess")


DEMO = (
    Machine.define("crash.demo", queue="download")
    .start("write", write)
    .then("digest", digest)
    .then("ledger", ledger)
    .end()
)
POISON = Machine.define("crash.poison").start("prepare", lambda ctx, r: r).then("explode", poison).end()


def make_engine(db: Database, max_attempts: int) -> Engine:
    engine = Engine(
        db, queues={"download": 2}, retry=RetryPolicy(base_s=0.01, cap_s=0.05, max_attempts=max_attempts)
    )
    engine.register(DEMO)
    engine.register(POISON)
    return engine


def main(argv: list[str]) -> int:
    db_path, markers, mode, count, max_attempts = argv[1], Path(argv[2]), argv[3], int(argv[4]), int(argv[5])
    _rng.seed(os.getpid())
    db = Database(db_path)
    engine = make_engine(db, max_attempts)
    if mode == "start":
        handles = [
            engine.start("crash.demo", f"res{i}", "build", {"markers": str(markers), "resource": f"res{i}"})
            for i in range(count)
        ]
    elif mode == "resume":
        handles = engine.resume()
    elif mode == "poison":
        handles = [engine.start("crash.poison", "p", "explode", {"x": 1})]
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("started", flush=True)
    for handle in handles:
        handle.wait(30)
    print("done", flush=True)
    engine.shutdown()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
