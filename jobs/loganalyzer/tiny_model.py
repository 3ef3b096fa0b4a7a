"""Build a tiny Llama-architecture model locally, for fast tests (no hub download; the demo uses SmolLM2-135M).

The model is randomly initialised (it knows nothing: its scores mean nothing) but has the structure of
Llama-3.1-8B-Instruct — ``LlamaForCausalLM``, grouped-query attention, RoPE theta 500k, the Llama 3 special tokens
and the real Llama 3.1 chat template — so every stage runs the same code path as with the real model. The
tokenizer is a byte-level BPE trained on the given text (e.g. the chunked logs).

``loganalyzer tiny-model --out DIR --corpus chunks.jsonl [--vocab-size 4096] [--hidden-size 64] ...``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field

from loganalyzer.config import SEED, ConfigError, StageConfig, parse_config

log = logging.getLogger("loganalyzer.tiny_model")

# The Llama 3 special tokens the chat template and generation config use.
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT, "<|finetune_right_pad_id|>"]


class TinyModelConfig(StageConfig):
    """Build a tiny random-init Llama model + BPE tokenizer trained on a local corpus."""

    out: str = Field(description="output model directory")
    corpus: list[str] = Field(description="JSON Lines files whose text fields train the tokenizer")
    vocab_size: int = Field(4096, ge=300)
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(176, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(16384, ge=128)
    seed: int = SEED


# The keys whose strings are text a model reads: a chunk's ``content``, a CPT row's ``text``, a record's
# ``output`` (with its ``instruction``/``output`` pairs and ``messages``' ``content``). Metadata (ids, ``source``
# paths, systems, roles) stays out, so that the tokenizer is the same wherever the checkout lies.
TEXT_KEYS = frozenset({"content", "text", "instruction", "input", "output", "messages"})


def corpus_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """The text strings (values under :data:`TEXT_KEYS`, at any depth) of every row of JSON Lines files."""
    from loganalyzer.io import read_jsonl

    def strings(v, is_text: bool) -> Iterator[str]:
        if isinstance(v, str):
            if is_text:
                yield v
        elif isinstance(v, list):
            for x in v:
                yield from strings(x, is_text)
        elif isinstance(v, dict):
            for k, x in v.items():
                yield from strings(x, k in TEXT_KEYS)

    for p in paths:
        for row in read_jsonl(p):
            yield from strings(row, False)


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """A ``PreTrainedTokenizerFast``: byte-level BPE trained on ``texts``, Llama 3 special tokens, Llama 3.1
    chat template, ``<|eot_id|>`` as EOS (as in Llama-3.1-Instruct's generation) and a dedicated pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import llama3_1_chat_template

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT,
                                   pad_token="<|finetune_right_pad_id|>", model_max_length=131072)
    fast.chat_template = llama3_1_chat_template
    return fast


def build(cfg: TinyModelConfig) -> Path:
    """Write the model, tokenizer and generation config to ``cfg.out``; return that path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    missing = [p for p in cfg.corpus if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"--corpus: no such file(s) {missing}")
    texts = list(corpus_texts(cfg.corpus))
    if not texts:
        raise ConfigError(f"--corpus {cfg.corpus}: no text to train the tokenizer on (no string under any of "
                          f"the keys {sorted(TEXT_KEYS)}); pass chunks.jsonl or a dataset file")
    tokenizer = build_tokenizer(texts, cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOS), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        do_sample=True, temperature=0.6, top_p=0.9)  # as Llama-3.1-Instruct ships; evaluate forces greedy
    out = Path(cfg.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "loganalyzer_tiny_model.json").write_text(json.dumps(
        {"note": "random-init tiny Llama built locally by `loganalyzer tiny-model`; its outputs are noise",
         **cfg.model_dump()}, indent=2))
    log.info("tiny model: %d parameters, vocab %d -> %s", model.num_parameters(), len(tokenizer), out)
    return out


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    build(parse_config(TinyModelConfig, "tiny-model", argv))


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
