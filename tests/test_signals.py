"""A stopped command stops its whole process tree: SIGTERM (a pod's stop) and SIGINT end every loganalyzer command,
its children and theirs within 10 s, with exit status 128 + the signal, also as a container's PID 1."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import running_cmdline

from loganalyzer.cli import CHILD_STOP_GRACE_S, entry

# A stage with a child that ignores SIGTERM (so it needs the SIGKILL) and a shell whose own child is a grandchild.
STAGE = """
import subprocess, sys, time
from loganalyzer.cli import entry

def main(argv):
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\\n"
    subprocess.Popen(["sh", "-c", "sleep 120 & wait"])
    print("ready", flush=True)
    stubborn.wait()

entry(main)
"""


def alive(procs: list[psutil.Process]) -> list[str]:
    """The command lines of ``procs`` still running (a zombie counts as gone)."""
    return [cmd for cmd in map(running_cmdline, procs) if cmd]


def family_of(pid: int, size: int, timeout: float = 30) -> list[psutil.Process]:
    """The descendants of ``pid`` once there are ``size`` of them."""
    deadline = time.monotonic() + timeout
    while len(family := psutil.Process(pid).children(recursive=True)) < size:
        assert time.monotonic() < deadline, f"pid {pid} has {len(family)} descendants, not {size}"
        time.sleep(0.1)
    return family


def stop(proc: subprocess.Popen, sig: int, family: list[psutil.Process]) -> tuple[int | None, float, list[str]]:
    """Send ``sig``: (exit status or None after 10 s, seconds it took, ``family`` still running)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - t0
    left = alive(family)
    for p in family:  # what a failure leaves
        with contextlib.suppress(psutil.Error):
            p.kill()
    return code, took, left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_stage_stops_its_children_and_grandchildren(sig):
    proc = subprocess.Popen([sys.executable, "-c", STAGE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        family = family_of(proc.pid, 3)  # the stubborn child, sh, its sleep
        code, took, left = stop(proc, sig, family)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 128 + sig and not left, (code, left, err)
    # The stubborn child took the SIGKILL after the grace period; the others went at once.
    assert CHILD_STOP_GRACE_S <= took < CHILD_STOP_GRACE_S + 4, took
    assert f"{signal.Signals(sig).name}: stopped 3 child process(es), 1 killed after {CHILD_STOP_GRACE_S:g} s" \
           in err, err
    assert "Traceback" not in err, err


def test_the_handlers_are_installed_for_the_command_only():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen = {}
    entry(lambda argv: seen.update({s: signal.getsignal(s) for s in before}))
    assert all(seen[s] is not before[s] and callable(seen[s]) for s in before), seen
    assert {s: signal.getsignal(s) for s in before} == before


def _pid1_available() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "-pf", "--mount-proc", "true"],
                                            capture_output=True).returncode == 0


@pytest.mark.skipif(not _pid1_available(), reason="needs unshare -pf --mount-proc (root) for a PID namespace")
def test_as_pid_1_a_command_stops_on_sigterm():
    """In its own PID namespace (a container) a process whose SIGTERM action is the default ignores SIGTERM; a
    loganalyzer command handles it and stops at once (before: the pod waited its grace period for SIGKILL)."""
    def start_as_pid1(code: str) -> tuple[subprocess.Popen, psutil.Process]:
        proc = subprocess.Popen(["unshare", "-pf", "--mount-proc", sys.executable, "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        return proc, psutil.Process(proc.pid).children()[0]

    # Without a handler: still running 2 s after SIGTERM (what the test is about: the kernel's rule holds here).
    plain, init = start_as_pid1("import time; print('ready', flush=True); time.sleep(60)")
    try:
        init.send_signal(signal.SIGTERM)
        time.sleep(2)
        assert alive([init]), "python as PID 1 stopped on SIGTERM without a handler"
    finally:
        plain.kill()
        init.kill()
        plain.wait()

    proc, init = start_as_pid1(STAGE)
    try:
        family = [init, *family_of(init.pid, 3)]
        t0 = time.monotonic()
        init.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM, proc.stderr.read()
        assert time.monotonic() - t0 < CHILD_STOP_GRACE_S + 4
        assert not alive(family)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.heavy
def test_a_stopped_demo_stops_its_pipeline_tasks(tmp_path):
    """``loganalyzer demo`` runs each pipeline task as a child (kfp's SubprocessRunner): SIGTERM while a task runs
    ends the demo and every task process within 10 s (before, the tasks went on running)."""
    log = tmp_path / "demo.log"
    with open(log, "w") as fh:  # a file, not a pipe: the tasks' output would fill a pipe nobody reads yet
        proc = subprocess.Popen([sys.executable, "-m", "loganalyzer", "demo", "--base-model", "tiny",
                                 "--out", str(tmp_path / "demo")], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (tasks := [p for p in psutil.Process(proc.pid).children()
                             if time.time() - p.create_time() > 2]):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("kfp" in " ".join(p.cmdline()) for p in tasks), [p.cmdline() for p in tasks]
        code, _, left = stop(proc, signal.SIGTERM, family)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert code == 128 + signal.SIGTERM and not left, (code, left, out[-3000:])
    assert "SIGTERM: stopped" in out, out[-3000:]
