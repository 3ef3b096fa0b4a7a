"""Every Dockerfile in images/: pinned bases, multi-stage, non-root, no secrets, pinned dependencies, and an
entrypoint module that exists. (No Docker engine here: `make images` builds them where one runs.)"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
SECRET_NAMES = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.I)
PINNED = {line.split("==")[0].strip().lower() for line in (ROOT / "constraints.txt").read_text().splitlines()
          if "==" in line and not line.startswith("#")}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_every_image_folder_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} >= {"jobs", "train"}
    assert all((ROOT / "images" / d.name / "Dockerfile").is_file() for d in (ROOT / "images").iterdir()
               if d.is_dir() and d.name != "wheels")  # wheels/: build input for offline builds, not an image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile(dockerfile):
    ins = instructions(dockerfile)
    args = {}
    for op, rest in ins:
        if op == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v.strip('"')
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    stages = {rest.split()[-1] for op, rest in ins if op == "FROM" and " AS " in rest.upper()}
    for ref in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), ref)
        if image in stages:
            continue
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d+\.\d+", tag) and tag != "latest", f"base {image!r} is not pinned to a tag"

    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    users = [rest for op, rest in final if op == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the runtime stage runs as USER 1000"

    for op, rest in ins:
        if op in ("ENV", "ARG"):
            for k, v in re.findall(r"(\w+)=(\S*)", rest):
                assert not (SECRET_NAMES.search(k) and v), f"{op} {k} carries a value: pass secrets at run time"
        if op == "RUN":
            for install in re.findall(r"pip install[^&]*", rest):
                if not re.search(r"torch==|\$TORCH_SPEC", install) and "flash" not in install.lower():
                    assert "-c constraints.txt" in install, f"unpinned install: {install}"
                    # every package named besides the project itself is pinned in constraints.txt
                    named = [a for a in install.split()[2:] if not a.startswith(("-", '"', "'", "."))
                             and a != "constraints.txt"]
                    unpinned = [a for a in named if re.split(r"[<>=\[]", a)[0].lower() not in PINNED]
                    assert not unpinned, f"{dockerfile.parent.name}: {unpinned} not pinned in constraints.txt"
        if op == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"

    entry = next(json.loads(rest) for op, rest in reversed(ins) if op == "ENTRYPOINT")
    assert entry[:2] == ["python", "-m"], entry
    assert importlib.util.find_spec(entry[2]) is not None, f"entrypoint module {entry[2]} does not exist"


def test_dockerignore_keeps_the_context_small():
    """Everything is excluded but what the builds COPY (a .venv or runs/ would otherwise be uploaded)."""
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    copied = {src.rstrip("/") for d in DOCKERFILES for op, rest in instructions(d)
              if op == "COPY" and "--from" not in rest for src in rest.split()[:-1]}
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert all(c in allowed or c.split("/")[0] in allowed for c in copied), (copied, allowed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_build_context_holds_what_the_wheel_carries(dockerfile):
    """`pip install .` in the image builds the wheel, which maps repository folders into the package
    (loganalyzer.resources.SHIPPED): each must be copied into the build stage, or setuptools fails."""
    from loganalyzer.resources import SHIPPED

    copied = {rest.split()[0].rstrip("/") for op, rest in instructions(dockerfile)
              if op == "COPY" and "--from" not in rest}
    for folder in SHIPPED.values():
        assert any(folder == c or folder.startswith(c + "/") for c in copied), f"{dockerfile}: COPY {folder}"


def test_flash_attn_is_built_for_the_archs_it_reads():
    """flash-attn 2.8's setup.py takes its archs from FLASH_ATTN_CUDA_ARCHS ("80;90;100;120" by default) and ignores
    TORCH_CUDA_ARCH_LIST (Dao-AILab/flash-attention setup.py, cuda_archs())."""
    runs = [rest for op, rest in instructions(ROOT / "images" / "train" / "Dockerfile") if op == "RUN"]
    install = next(r for r in runs if "FLASH_ATTN_SPEC" in r)
    assert "FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS}" in install and "TORCH_CUDA_ARCH_LIST" not in install
    args = dict(re.findall(r"ARG (\w+)=\"?([^\"\n]*)", (ROOT / "images" / "train" / "Dockerfile").read_text()))
    assert args["FLASH_ATTN_CUDA_ARCHS"] == "80;90"


def test_offline_build_arguments_default_to_todays_build():
    """`make images-local` passes TORCH_INDEX_URL="" (torch from images/wheels/) and FETCH_EVALUATE_MODULES=0; a
    plain build keeps the CPU index and the Hub's metric modules. Both CPU images share the base that
    images/local-base.sh stands in for (it reads it from the jobs Dockerfile)."""
    bases = {}
    for name in ("jobs", "chatbot"):
        ins = instructions(ROOT / "images" / name / "Dockerfile")
        args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
        assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert args["TORCH_SPEC"] == "torch==2.13.0"
        bases[name] = {rest.split()[0] for op, rest in ins if op == "FROM" and not rest.startswith("build")}
    jobs_args = dict(rest.split("=", 1) for op, rest in instructions(ROOT / "images" / "jobs" / "Dockerfile")
                     if op == "ARG" and "=" in rest)
    assert jobs_args["FETCH_EVALUATE_MODULES"] == "1"
    assert bases["jobs"] == bases["chatbot"] == {"python:3.11.11-slim-bookworm"}
    assert "TORCH_INDEX_URL= " in (ROOT / "Makefile").read_text()
    assert (ROOT / "images" / "wheels" / "README.md").is_file()  # COPY images/wheels needs the folder in a clone


@pytest.mark.integration
@pytest.mark.heavy
def test_train_image_requirements_resolve_for_its_python(tmp_path):
    """The CUDA train image cannot be built here; its Python requirement set (the Dockerfile's own pip lines, at
    constraints.txt's pins) must at least resolve for its Python and platform. `uv pip compile` resolves for a
    target other than this interpreter; it asks the package index (PyPI). flash-attn, built against the image's
    torch, is left out. PyPI's torch 2.13.0 stands in for the cu128 index's build of the same version."""
    import subprocess
    import sys

    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv not installed (make install: the dev extra)")
    text = (ROOT / "images" / "train" / "Dockerfile").read_text()
    python = re.search(r"(python3\.\d+) -m venv", text).group(1)
    run = next(rest for op, rest in instructions(ROOT / "images" / "train" / "Dockerfile")
               if op == "RUN" and "-c constraints.txt" in rest)
    torch = re.search(r'"(torch==[^"]+)"', run).group(1)
    named = [a.strip('"') for a in re.search(r"-c constraints.txt (.*?)(&&|$)", run).group(1).split()]
    # ".[deepspeed,...]" is the project: by its path, for a resolver run outside the build context
    reqs = [torch, *(f"loganalyzer{a[1:]} @ {ROOT.as_uri()}" if a.startswith(".[") else a for a in named)]
    assert len(reqs) >= 3 and any("deepspeed" in r for r in reqs), reqs
    (tmp_path / "train.in").write_text("\n".join(reqs) + "\n")
    result = subprocess.run(
        [str(uv), "pip", "compile", "--native-tls", "--python-version", python.removeprefix("python"),
         "--python-platform", "x86_64-manylinux_2_28", "-c", str(ROOT / "constraints.txt"),
         str(tmp_path / "train.in"), "-o", str(tmp_path / "train.txt")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "UV_NO_CONFIG": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+)", (tmp_path / "train.txt").read_text(), re.M))
    assert pins["torch"] == torch.split("==")[1] and {"deepspeed", "liger-kernel", "transformers"} <= set(pins)
