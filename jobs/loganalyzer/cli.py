"""``loganalyzer <command> [args]``: one subcommand per stage, each delegating to its module's ``main``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

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


def entry(stage_main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a stage's ``main`` as a command: a ConfigError becomes ``error: <message>`` on stderr and exit code 2
    (``python -m loganalyzer.<stage>`` and ``loganalyzer <stage>`` both come through here)."""
    from loganalyzer.config import EXIT_USAGE, ConfigError

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
    module = importlib.import_module(COMMANDS[command][0])
    entry(module.main, rest)


if __name__ == "__main__":
    main()
