"""``loganalyzer <command> [args]``: one subcommand per stage, each delegating to its module's ``main``."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator

COMMANDS = {
    "chunk": ("loganalyzer.chunk", "chunk raw logs into 50-150-line samples"),
    "redact": ("loganalyzer.redact", "remove secrets, pseudonymise IPs/e-mails/cards in chunks (Presidio)"),
    "synthesize": ("loganalyzer.synthesize", "generate training data with a teacher LLM"),
    "build-datasets": ("loganalyzer.build_datasets", "SFT chat splits + CPT corpus + stats/histogram"),
    "train": ("loganalyzer.train", "CPT (full) or SFT (LoRA) from a recipe; --plan for a sizing report"),
    "evaluate": ("loganalyzer.evaluate", "generate test answers per model and score them"),
    "score": ("loganalyzer.score", "score predictions against references (six metrics, JSON)"),
    "launch": ("loganalyzer.launch", "run a training recipe as a Kubeflow PyTorchJob and wait for it"),
    "deploy": ("loganalyzer.deploy", "create/update the KServe InferenceService for a model, wait until Ready"),
    "serve": ("loganalyzer.serve", "OpenAI-compatible server for a model dir on loopback"),
    "import-gguf": ("loganalyzer.gguf_import", "GGUF checkpoint -> model dir (default: the demo's SmolLM2-135M)"),
    "tiny-model": ("loganalyzer.tiny_model", "build a tiny random Llama + tokenizer for fast tests (no hub)"),
    "pipeline": ("loganalyzer.pipeline", "compile the Kubeflow pipeline, or start a run on a KFP endpoint"),
    "chat": ("loganalyzer.chat", "the log-analysis chatbot (Streamlit) on an OpenAI-compatible endpoint"),
    "demo": ("loganalyzer.demo", "run the whole pipeline on one machine (kfp local runner)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: loganalyzer <command> [args]   (loganalyzer <command> --help)\n\ncommands:\n{rows}\n"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the children of a stopped command get between SIGTERM and SIGKILL, in seconds: well inside the pods'
# terminationGracePeriodSeconds (30 s by default).
CHILD_STOP_GRACE_S = 5.0


def stop_descendants(grace_s: float = CHILD_STOP_GRACE_S) -> tuple[int, int]:
    """SIGTERM every descendant of this process (children and theirs, found by psutil before any is signalled, so
    that orphaned grandchildren are not missed), SIGKILL those still alive ``grace_s`` seconds later, and reap them.
    Returns (descendants stopped, of which killed)."""
    import psutil

    family = psutil.Process().children(recursive=True)
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return len(family), len(alive)


@contextlib.contextmanager
def stop_cleanly_on_signals(grace_s: float = CHILD_STOP_GRACE_S) -> Iterator[None]:
    """While the block runs, SIGTERM (a pod's stop, ``kill``) and SIGINT (Ctrl-C, ``kill -INT``) stop every
    descendant (:func:`stop_descendants`) and then exit with 128 + the signal number (143, 130), the status a shell
    gives a process ended by that signal; a second signal during the stop ends the process at once.

    Why: Python as a container's PID 1 ignores SIGTERM unless it handles it (the kernel drops signals whose action
    is the default for a namespace's init), so a pod stop waited the whole grace period for SIGKILL; and children
    (kfp's local-runner tasks, data-loader workers) outlived a stopped command, or, on SIGINT, the command waited
    for them. Installed from the main thread only (elsewhere a no-op); the previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        stopped, killed = stop_descendants(grace_s)
        logging.getLogger("loganalyzer").warning(
            "%s: stopped %d child process(es)%s; exiting with %d", signal.Signals(signum).name, stopped,
            f", {killed} killed after {grace_s:g} s" if killed else "", 128 + signum)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def entry(stage_main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a stage's ``main`` as a command: a ConfigError becomes ``error: <message>`` on stderr and exit code 2;
    SIGTERM/SIGINT stop the command's children and exit 143/130 (:func:`stop_cleanly_on_signals`).
    ``python -m loganalyzer.<stage>`` and ``loganalyzer <stage>`` both come through here."""
    from loganalyzer.config import EXIT_USAGE, ConfigError

    with stop_cleanly_on_signals():
        try:
            stage_main(argv)
        except ConfigError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    with stop_cleanly_on_signals():  # already while the stage imports (torch: seconds)
        module = importlib.import_module(COMMANDS[command][0])
        entry(module.main, rest)


if __name__ == "__main__":
    main()
