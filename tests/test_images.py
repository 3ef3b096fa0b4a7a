"""Every Dockerfile in images/: pinned bases, multi-stage, non-root, no secrets, pinned dependencies, and an
entrypoint module that exists. (No Docker engine here: `make images` builds them where one runs.)"""

from __future__ import annotations

import importlib.util
import json
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
               if d.is_dir())


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
                if "torch==" not in install and "flash" not in install.lower():
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
