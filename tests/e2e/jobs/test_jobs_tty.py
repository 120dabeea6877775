"""`capsa run -i/-t` and `capsa attach` through a real pseudo-terminal on the client side (ADR-0013)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

from jobs_helpers import stdout_of, wait_ended, wait_running
from pty_client import PtyClient

from capsa.api.client import CapsaClient
from tests.fixtures.daemon import CAPSA, RunningDaemon


def _cli(daemon: RunningDaemon, *args: str, rows: int = 24, cols: int = 80) -> PtyClient:
    return PtyClient([*CAPSA, "--config", str(daemon.home / "client-admin.yaml"), *args], daemon.env,
                     rows=rows, cols=cols)


def _job_of(daemon: RunningDaemon, name: str) -> str:
    return daemon.client().get_job(name).id


def test_stdin_is_streamed_and_its_eof_reaches_the_job(daemon: RunningDaemon) -> None:
    res = daemon.cli("run", "-i", "--", "wc", "-l", input=b"a\nb\n")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.strip() == b"2"
    # more than one pipe's worth, byte-exact, and the job's exit code is the CLI's
    data = os.urandom(3 << 20)
    res = daemon.cli("run", "-i", "--", "/bin/sh", "-c", "sha256sum; exit 5", input=data)
    import hashlib

    assert res.returncode == 5, res.stderr.decode()
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_a_quick_job_ends_before_the_client_attaches_and_its_output_and_exit_still_arrive(
        daemon: RunningDaemon) -> None:
    for _ in range(3):
        res = daemon.cli("run", "-i", "--", "/bin/sh", "-c", "echo hi; exit 9", input=b"")
        assert (res.returncode, res.stdout) == (9, b"hi\n"), res.stderr
    # -t alone: a terminal for the job, no input from the client (whose stdin is no terminal here)
    res = daemon.cli("run", "-t", "--", "/bin/sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty", input=b"")
    assert res.returncode == 0 and res.stdout == b"on-a-tty\r\n", res.stderr


def test_interactive_shell_prompt_resize_ctrl_c_and_exit_code(daemon: RunningDaemon) -> None:
    c = _cli(daemon, "run", "-it", "--name", "tty-sh", "--", "/bin/sh", rows=30, cols=100)
    try:
        c.expect(rb"# ")                       # the shell's prompt: it saw a terminal on stdin
        assert c.is_raw()                      # the client's terminal is in raw mode while attached
        c.send(b"tty -s && echo is-a-tty; stty size\r")
        m = c.expect(rb"is-a-tty\r\n(\d+) (\d+)\r\n")
        assert m.groups() == (b"30", b"100")   # the size at start
        # Each command is typed after the prompt: typed ahead, the terminal would echo it before the
        # shell's prompt and the output would follow "# " instead of a line end.
        c.expect(rb"# ")
        c.resize(41, 123)                      # SIGWINCH in the client -> TIOCSWINSZ on the job's terminal
        time.sleep(0.3)
        c.send(b"stty size\r")
        assert c.expect(rb"(\d+) (\d+)\r\n").groups() == (b"41", b"123")
        c.expect(rb"# ")
        # PID 1 is a session leader whose controlling terminal is its stdin
        c.send(b"cat /proc/1/stat | cut -d' ' -f6,7\r")
        sid, tty_nr = c.expect(rb"\r\n(\d+) (\d+)\r\n").groups()
        assert sid == b"1" and int(tty_nr) != 0
        c.send(b"sleep 100\r")
        time.sleep(0.5)
        c.send(b"\x03")                        # Ctrl-C typed: SIGINT through the job's terminal
        c.expect(rb"# ")
        c.send(b"echo status=$?\r")
        assert c.expect(rb"status=(\d+)").group(1) == b"130"
        c.send(b"exit 3\r")
        assert c.wait() == 3
        assert not c.is_raw()                  # restored
    finally:
        c.close()
    # one stream, in the lossless log: what the terminal showed is in `capsa logs`
    logs = daemon.cli("logs", "tty-sh", check=True).stdout
    assert b"status=130" in logs


def test_detach_leaves_the_job_running_and_attach_reconnects(daemon: RunningDaemon) -> None:
    c = _cli(daemon, "run", "-it", "--name", "tty-detach", "--", "/bin/sh")
    try:
        c.expect(rb"# ")
        c.send(b"X=kept\r")
        c.expect(rb"# ")
        c.send(b"\x10\x11")                    # Ctrl-P Ctrl-Q
        assert c.wait() == 0
        assert b"detached" in c.buf
        assert not c.is_raw()
    finally:
        c.close()
    job_id = _job_of(daemon, "tty-detach")
    assert daemon.client().get_job(job_id).state == "RUNNING"
    c = _cli(daemon, "attach", "--detach-keys", "ctrl-a,d", "tty-detach")
    try:
        c.wait_attached()
        c.send(b"echo X=$X\r")                 # the same shell: its variable is still set
        c.expect(rb"X=kept")
        c.send(b"\x10\x11\x01d")               # Ctrl-P Ctrl-Q are not this attach's keys; ctrl-a d is
        assert c.wait() == 0
    finally:
        c.close()
    assert daemon.client().get_job(job_id).state == "RUNNING"
    c = _cli(daemon, "attach", job_id[:12])
    try:
        c.wait_attached()
        # The keys typed before the last detach reached the job (Ctrl-Q is the terminal's XON): its line holds ^P.
        c.send(b"\r")
        c.expect(rb"\x10: not found")
        c.send(b"exit 7\r")
        assert c.wait() == 7                   # the job's exit code is attach's
    finally:
        c.close()
    assert wait_ended(daemon.client(), job_id).exit_code == 7


def test_attach_refuses_unknown_ended_and_non_interactive_jobs(daemon: RunningDaemon) -> None:
    res = daemon.cli("attach", "no-such-job")
    assert res.returncode == 3 and b"no-such-job" in res.stderr
    ended = daemon.cli("run", "--name", "tty-ended", "--", "/bin/true", check=True)
    assert ended.returncode == 0
    res = daemon.cli("attach", "tty-ended")
    assert res.returncode == 5 and b"has ended" in res.stderr, res.stderr
    job_id = daemon.cli("run", "-d", "--", "/bin/sleep", "100", check=True).stdout.decode().strip()
    try:
        wait_running(daemon.client(), job_id)
        res = daemon.cli("attach", job_id)
        assert res.returncode == 5 and b"not started with -i or -t" in res.stderr, res.stderr
        # no terminal on stdin: -it is refused before any job exists
        before = len(json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout))
        res = daemon.cli("run", "-it", "--", "/bin/sh", input=b"")
        assert res.returncode != 0 and b"not a terminal" in res.stderr
        assert len(json.loads(daemon.cli("ps", "-a", "--json", check=True).stdout)) == before
        res = daemon.cli("run", "-it", "--detach-keys", "ctrl-1", "--", "/bin/sh")
        assert res.returncode != 0 and b"detach-keys" in res.stderr
    finally:
        daemon.cli("stop", "-t", "0.1", job_id)


def test_attach_is_refused_to_readers(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "-i", "--", "/bin/cat", check=True).stdout.decode().strip()
    try:
        res = daemon.cli("attach", job_id, role="reader")
        assert res.returncode == 6, res.stderr
        res = daemon.cli("attach", job_id, role="developer", input=b"hello\n")
        # -i without a terminal: stdin goes in, its EOF closes the job's stdin, cat ends
        assert res.returncode == 0 and res.stdout == b"hello\n", res.stderr
    finally:
        daemon.cli("stop", "-t", "0.1", job_id)


def test_terminal_job_survives_a_daemon_restart_and_the_client_restores_its_terminal(
        fresh_daemon: RunningDaemon) -> None:
    daemon = fresh_daemon
    c = _cli(daemon, "run", "-it", "--name", "tty-restart", "--", "/bin/sh")
    try:
        c.expect(rb"# ")
        assert c.is_raw()
        daemon.kill9()                          # the client's call fails: an error, never a raw terminal
        code = c.wait()
        assert code != 0
        assert not c.is_raw()
    finally:
        c.close()
    daemon.start()
    job_id = _job_of(daemon, "tty-restart")
    assert daemon.client().get_job(job_id).state == "RUNNING"   # the supervisor holds the terminal
    c = _cli(daemon, "attach", job_id)
    try:
        c.wait_attached()
        c.send(b"echo again\r")
        c.expect(rb"again\r\n")
        c.send(b"exit\r")
        assert c.wait() == 0
    finally:
        c.close()


def test_exec_output_is_streamed_as_it_is_produced(daemon: RunningDaemon) -> None:
    import subprocess

    job_id = daemon.cli("run", "-d", "--", "/bin/sleep", "100", check=True).stdout.decode().strip()
    try:
        wait_running(daemon.client(), job_id)
        proc = subprocess.Popen([*CAPSA, "--config", str(daemon.home / "client-admin.yaml"), "exec", job_id, "--",
                                 "/bin/sh", "-c", "echo first; sleep 3; echo second >&2; exit 4"],
                                env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        assert proc.stdout is not None and proc.stdout.readline() == b"first\n"
        assert time.monotonic() - t0 < 2.5      # long before the process ends
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 4 and err == b"second\n"
        res = daemon.cli("exec", "-i", job_id, "--", "wc", "-l", input=b"a\nb\n")
        assert res.returncode == 0 and res.stdout.strip() == b"2"
    finally:
        daemon.cli("stop", "-t", "0.1", job_id)


def test_exec_with_a_terminal_resizes_interrupts_and_keeps_the_exit_code(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "--", "/bin/sleep", "100", check=True).stdout.decode().strip()
    try:
        wait_running(daemon.client(), job_id)
        c = _cli(daemon, "exec", "-it", job_id, "--", "/bin/sh", rows=33, cols=99)
        try:
            c.expect(rb"# ")
            assert c.is_raw()
            c.send(b"stty size; tr '\\0' ' ' < /proc/1/cmdline; echo\r")
            assert c.expect(rb"(\d+) (\d+)\r\n").groups() == (b"33", b"99")
            c.expect(rb"/bin/sleep 100")         # the job's PID 1: inside its PID namespace
            c.resize(44, 111)
            time.sleep(0.3)
            c.send(b"stty size\r")
            assert c.expect(rb"(\d+) (\d+)\r\n").groups() == (b"44", b"111")
            c.send(b"sleep 100\r")
            time.sleep(0.5)
            c.send(b"\x03")
            c.expect(rb"# ")
            c.send(b"echo st=$?\r")
            assert c.expect(rb"st=(\d+)").group(1) == b"130"
            c.send(b"exit 6\r")
            assert c.wait() == 6
            assert not c.is_raw()
        finally:
            c.close()
        events = json.loads(daemon.cli("inspect", job_id, check=True).stdout)["exec_events"]
        assert events[-1]["command"] == ["/bin/sh"] and events[-1]["exit_code"] == 6
    finally:
        daemon.cli("stop", "-t", "0.1", job_id)


def test_an_exec_ends_with_its_client_and_large_output_streams_whole(daemon: RunningDaemon) -> None:
    import signal
    import subprocess

    job_id = daemon.cli("run", "-d", "--", "/bin/sleep", "100", check=True).stdout.decode().strip()
    try:
        wait_running(daemon.client(), job_id)

        def shell_gone() -> bool:
            res = daemon.cli("exec", job_id, "--", "/bin/sh", "-c", "kill -0 $(cat /tmp/exec-shell.pid)")
            return res.returncode != 0

        c = _cli(daemon, "exec", "-it", job_id, "--", "/bin/sh")
        try:
            c.expect(rb"# ")
            c.send(b"echo $$ > /tmp/exec-shell.pid\r")
            c.expect(rb"# ")
            assert not shell_gone()
            os.kill(c.proc.pid, signal.SIGKILL)   # the client dies: the shell's terminal hangs up
            c.proc.wait(10)
        finally:
            c.close()

        deadline = time.monotonic() + 15
        while not shell_gone():
            assert time.monotonic() < deadline, "the exec'd shell outlived its client"
            time.sleep(0.2)
        # 64 MiB through the supervisor's back-pressure (it stops reading past 1 MiB unsent), byte-exact
        proc = subprocess.run([*CAPSA, "--config", str(daemon.home / "client-admin.yaml"), "exec", job_id, "--",
                               "/bin/sh", "-c", "head -c 67108864 /dev/zero | tr '\\0' x"],
                              env=daemon.env, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout) == 64 << 20 and proc.stdout.count(b"x") == 64 << 20
    finally:
        daemon.cli("stop", "-t", "0.1", job_id)


def test_a_signalled_client_restores_its_terminal_and_leaves_the_job(daemon: RunningDaemon) -> None:
    import signal

    c = _cli(daemon, "run", "-it", "--name", "tty-term", "--", "/bin/sh")
    try:
        c.expect(rb"# ")
        assert c.is_raw()
        os.kill(c.proc.pid, signal.SIGTERM)
        assert c.wait() == 128 + signal.SIGTERM
        assert not c.is_raw()
    finally:
        c.close()
    job_id = _job_of(daemon, "tty-term")
    assert daemon.client().get_job(job_id).state == "RUNNING"
    res = daemon.cli("attach", job_id, input=b"exit 4\n")   # a terminal job fed from a pipe: no raw mode
    assert res.returncode == 4, res.stderr


def test_attach_from_a_terminal_to_a_stdin_pipe_job(daemon: RunningDaemon) -> None:
    job_id = daemon.cli("run", "-d", "-i", "--name", "tty-pipe", "--", "/bin/cat", check=True).stdout.decode().strip()
    c = _cli(daemon, "attach", "tty-pipe")
    try:
        time.sleep(0.3)
        assert not c.is_raw()                  # a pipe job: the client's terminal stays as it is
        c.send(b"hello\n")
        c.expect(rb"hello\r\n(.|\r\n)*hello\r\n")   # the client terminal's echo, then cat's output
        c.send(b"\x04")                        # Ctrl-D: the client's stdin ends, and so does the job's
        assert c.wait() == 0
    finally:
        c.close()
    assert wait_ended(daemon.client(), job_id).exit_code == 0


def test_input_sent_just_before_a_detach_message_always_reaches_the_job(daemon: RunningDaemon) -> None:
    """The `detach` input is acted on by the daemon after the writes before it: 40 attaches in a row,
    each typing one line and detaching in the very next message, lose none of the lines, and each
    call ends with no `ended` message while the job goes on."""
    client = daemon.client()
    job = client.run_job(["/bin/cat"], stdin=True)
    wait_running(client, job.id)
    try:
        _attach_type_and_detach_40_times(client, job.id)
    finally:
        client.stop_job(job.id, grace_seconds=0)


def _attach_type_and_detach_40_times(client: CapsaClient, job_id: str) -> None:
    import threading

    from capsa.api.gen.capsa.v1 import interactive_pb2 as ipb

    for i in range(40):
        over = threading.Event()

        def inputs(line: bytes = b"line-%d\n" % i, over: threading.Event = over) -> Iterator[ipb.AttachInput]:
            yield ipb.AttachInput(job_id=job_id)
            yield ipb.AttachInput(stdin=line)
            yield ipb.AttachInput(detach=True)
            over.wait(10)        # the request side stays open: only the detach may end the call

        call = client.interactive.Attach(inputs(), timeout=10)   # a detach that is ignored fails here
        try:
            outputs = list(call)
        finally:
            over.set()
        assert outputs[0].attached and not any(o.ended for o in outputs), outputs
    assert client.get_job(job_id).state == "RUNNING"
    deadline = time.monotonic() + 10
    want = b"".join(b"line-%d\n" % i for i in range(40))
    while stdout_of(client, job_id, follow=False) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stdout_of(client, job_id, follow=False) == want
