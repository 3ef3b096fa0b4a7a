"""The package alone: built into a wheel and installed into a fresh venv outside the checkout, ``loganalyzer
pipeline compile`` and ``loganalyzer demo`` work from what the wheel carries (``loganalyzer.resources``), not
from the repository's layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from loganalyzer.pipeline import COMPILED
from loganalyzer.resources import CHECKOUT, SHIPPED


def test_the_wheel_mapping_is_the_shipped_mapping():
    """pyproject.toml's package-dir mapping (what the wheel carries) and loganalyzer.resources.SHIPPED (where the
    code looks) are the same mapping."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {k.removeprefix("loganalyzer."): v for k, v in setuptools["package-dir"].items() if k}
    assert mapped == SHIPPED
    assert set(SHIPPED).issubset(p.removeprefix("loganalyzer.") for p in setuptools["packages"])


def test_demo_refuses_an_out_dir_kfps_local_runner_would_rewrite(tmp_path):
    from loganalyzer.config import ConfigError
    from loganalyzer.demo import DemoConfig, run, stage_inputs

    with pytest.raises(ConfigError, match="rewrites 'python3'"):
        run(DemoConfig(out=str(tmp_path / "python3-demo")))
    log = tmp_path / "lib" / "python3.11" / "HDFS" / "HDFS_2k.log"
    log.parent.mkdir(parents=True)
    log.write_text("a line\n")
    kept = tmp_path / "kept.log"
    assert stage_inputs([log, kept], tmp_path / "out") == [str(tmp_path / "out" / "inputs" / "HDFS" / "HDFS_2k.log"),
                                                           str(kept)]
    assert (tmp_path / "out" / "inputs" / "HDFS" / "HDFS_2k.log").read_text() == "a line\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel of the checkout, installed with --no-deps into a fresh venv whose dependencies come from this
    environment's site-packages (added as a path, so this environment's editable loganalyzer is not seen)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    # what pyproject.toml builds from: the package, the folders it maps into the wheel, and the metadata files
    sources = {"jobs", "pyproject.toml", "README.md", "LICENSE", *(f.split("/")[0] for f in SHIPPED.values())}
    for name in sorted(sources):
        (shutil.copytree if (CHECKOUT / name).is_dir() else shutil.copy)(
            CHECKOUT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")}
                                            if (CHECKOUT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("loganalyzer-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"  # outside the checkout
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOGANALYZER_CONFIGS_DIR", "OPENAI_API_KEY",
                                                            "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return {"wheel": wheel, "venv": venv, "purelib": purelib, "work": work, "env": env}


def _run(installed: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(installed["venv"] / "bin" / "loganalyzer"), *args], cwd=installed["work"],
                            env=installed["env"], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.integration
def test_wheel_carries_the_recipes_the_dag_and_the_demo_logs(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for path in ("loganalyzer/configs/sft_lora.yaml", "loganalyzer/configs/deepspeed/zero3.json",
                 "loganalyzer/configs/models/llama-3.1-8b-instruct.json", "loganalyzer/dag/cpt_finetune.py",
                 "loganalyzer/dag/cpt-finetune.yaml", "loganalyzer/loghub/HDFS/HDFS_2k.log",
                 "loganalyzer/loghub/HDFS/HDFS_2k.log_structured.csv", "loganalyzer/loghub/LICENSE_loghub.txt",
                 "loganalyzer/prompts/judge.yaml", "loganalyzer/chat_templates/smollm2.jinja",
                 "loganalyzer/manifests/base/pytorchjob-cpt.yaml",
                 "loganalyzer/manifests/components/ray-sft/rayjob-sft.yaml"):
        assert path in names, path
    found = subprocess.run([str(installed["venv"] / "bin" / "python"), "-c",
                            "import loganalyzer.config as c, loganalyzer.pipeline as p, loganalyzer.launch as la; "
                            "print(c.__file__, c.CONFIGS_DIR, p.DEFINITION, la.shipped('manifests'), sep='\\n'); "
                            "la.pytorchjob(la.LaunchConfig(name='x', recipe='sft_lora'))"],
                           cwd=installed["work"], env=installed["env"], capture_output=True, text=True, check=True)
    for line in found.stdout.split():  # the wheel's own copies, not the checkout's
        assert Path(line).is_relative_to(installed["purelib"]), found.stdout


@pytest.mark.integration
def test_pipeline_compile_from_the_wheel_matches_the_committed_yaml(installed):
    _run(installed, "pipeline", "compile", timeout=300)
    assert (installed["work"] / "cpt-finetune.yaml").read_text() == COMPILED.read_text()


@pytest.mark.integration
def test_demo_from_the_wheel(installed):
    """The demo's DAG on the tiny model with the tiny recipes, on the bundled Loghub samples the wheel carries."""
    out = installed["work"] / "demo"
    _run(installed, "demo", f"out={out}", "base_model=tiny", "cpt_recipe=cpt_tiny_cpu", "sft_recipe=sft_tiny_cpu",
         "max_chunks_per_file=2", "val_size=1", "test_size=2", "eval_max_new_tokens=8", timeout=900)
    report = json.loads((out / "eval" / "report.json").read_text())
    assert list(report) == ["base", "sft", "cpt_sft"] and all(report[m]["n"] > 0 for m in report)
    # the wheel's samples, staged in the run dir (their path in the venv holds "python3": see demo.stage_inputs)
    sources = {Path(json.loads(line)["source"]) for line in (out / "chunks.jsonl").read_text().splitlines()}
    shipped = installed["purelib"] / "loganalyzer" / "loghub"
    assert {s.relative_to(out / "inputs").as_posix() for s in sources} == {
        f"{system}/{system}_2k.log" for system in ("HDFS", "OpenSSH", "Linux", "Apache")}
    assert all(s.read_bytes() == (shipped / s.parent.name / s.name).read_bytes() for s in sources)
