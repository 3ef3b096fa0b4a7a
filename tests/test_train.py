import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers.trainer_utils import get_last_checkpoint

from loganalyzer.config import ConfigError, load_yaml
from loganalyzer.train import (
    COMPLETE_MARKER,
    TrainConfig,
    _callbacks,
    last_complete_checkpoint,
    run,
    training_chat_template,
    write_marker,
)

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
CONVERSATIONS = [
    [{"role": "user", "content": "Summarize this log. Please answer in detail.\n\nLog content:\n\nA\nB"},
     {"role": "assistant", "content": "Two events."}],
    [{"role": "system", "content": "You analyse logs."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": " One "}, {"role": "user", "content": "More?"},
     {"role": "assistant", "content": "Two."}],
]


def _recipe(name, **over):
    return TrainConfig(**{**load_yaml(CONFIGS / f"{name}.yaml"), **over})


def _train(recipe: str, tiny_env, out: Path, *overrides: str, check: bool = True,
           popen: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """``loganalyzer.train`` of a tiny recipe in its own process on one thread, so that its floating-point results
    depend on nothing this test process did before (thread count, caches)."""
    train_file = tiny_env["datasets"] / ("cpt_train.jsonl" if recipe.startswith("cpt") else "sft_train.jsonl")
    cmd = [sys.executable, "-m", "loganalyzer.train", "--config", str(CONFIGS / f"{recipe}.yaml"),
           f"model_name_or_path={tiny_env['model']}", f"train_file={train_file}", f"output_dir={out}",
           "report_to=[none]", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(out.parent / f"{out.name}.cache")}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def _logged_losses(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_llama31_training_template_renders_like_the_original_and_masks_assistant_tokens(tiny_env):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_env["model"])
    training = training_chat_template(tok)
    assert training and "{% generation %}" in training
    for conv in CONVERSATIONS:
        for gen_prompt in (False, True):
            msgs = conv[:-1] if gen_prompt else conv
            assert (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
                    == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt,
                                               chat_template=training))
    enc = tok.apply_chat_template(CONVERSATIONS[1], chat_template=training, return_dict=True,
                                  return_assistant_tokens_mask=True)
    masked = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
    assert masked == "One<|eot_id|>Two.<|eot_id|>"


@pytest.mark.integration
def test_cpt_two_steps_checkpoint_resume_and_loadable_output(tiny_env, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "cpt"
    cfg = _recipe("cpt_tiny_cpu", model_name_or_path=str(tiny_env["model"]),
                  train_file=str(tiny_env["datasets"] / "cpt_train.jsonl"), output_dir=str(out), max_steps=2,
                  save_steps=1, max_length=256, report_to=["none"])
    metrics = run(cfg)
    assert metrics["train_tokens_seen"] > 0 and math.isfinite(metrics["train_loss"])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (out / "loss_curve.png").is_file()
    AutoModelForCausalLM.from_pretrained(out)
    ckpts = out / "checkpoints"
    assert json.loads((ckpts / "checkpoint-2" / COMPLETE_MARKER).read_text())["global_step"] == 2
    # A pod killed while writing checkpoint-3: its weights cut short, no marker. transformers'
    # get_last_checkpoint (trainer_utils.py) takes the highest number regardless; resume must not.
    shutil.copytree(ckpts / "checkpoint-2", ckpts / "checkpoint-3")
    (ckpts / "checkpoint-3" / COMPLETE_MARKER).unlink()
    weights = ckpts / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert get_last_checkpoint(str(ckpts)).endswith("checkpoint-3")
    caplog.set_level("INFO", logger="loganalyzer.train")
    run(cfg.model_copy(update={"max_steps": 3}))
    assert "skipping" in caplog.text and "continuing from" in caplog.text
    assert re.search(r"continuing from \S*checkpoint-2\b", caplog.text)
    assert json.loads((ckpts / "checkpoint-3" / COMPLETE_MARKER).read_text())["global_step"] == 3
    AutoModelForCausalLM.from_pretrained(ckpts / "checkpoint-3")  # written again, whole


@pytest.mark.integration
def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tiny_env, tmp_path):
    """A CPT run killed with SIGKILL (as the kubelet does after the grace period) once a checkpoint is complete, then
    started again with ``resume: auto``, has the uninterrupted run's loss at every step and its final weights.
    Tolerance: 1e-5 relative on each logged loss, 1e-6 absolute on each weight (same process settings, one thread;
    the resumed run restores the optimizer, scheduler, RNG and data position from the checkpoint)."""
    import signal

    from safetensors.torch import load_file

    steps = 60
    run_args = (f"max_steps={steps}", "save_steps=10", "logging_steps=1", "max_length=128",
                "per_device_train_batch_size=1")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _train("cpt_tiny_cpu", tiny_env, whole, *run_args)
    proc = _train("cpt_tiny_cpu", tiny_env, broken, *run_args, popen=True)
    deadline = time.monotonic() + 300
    while not list((broken / "checkpoints").glob(f"checkpoint-*/{COMPLETE_MARKER}")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (broken / "model.safetensors").exists(), "the run finished before it was killed"
    resumed = _train("cpt_tiny_cpu", tiny_env, broken, *run_args)
    (resumed_from,) = re.findall(r"continuing from \S*checkpoint-(\d+)", resumed.stderr)
    assert 10 <= int(resumed_from) < steps

    def losses(out):
        return _logged_losses(out / "checkpoints" / f"checkpoint-{steps}")

    expected, got = losses(whole), losses(broken)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    assert all(got[s] == pytest.approx(expected[s], rel=1e-5) for s in expected), (expected, got)
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


# The first logged losses of the seeded tiny runs (tiny model and data from the tiny_env fixture, one thread), as
# measured when they were stored. A change to tokenization, packing, masking, the chat template, the loss or the
# optimizer setup moves them; bit-level noise between CPUs stays far inside the tolerance. (They once differed
# between checkouts because the chunks' absolute `source` paths trained the tiny tokenizer; see
# test_tiny_tokenizer_reads_only_text_not_paths.)
GOLDEN_LOSSES = {"cpt_tiny_cpu": [6.961624, 6.963814, 6.924335], "sft_tiny_cpu": [6.969690, 6.973413, 6.966439]}
GOLDEN_REL_TOL = 1e-4


@pytest.mark.integration
@pytest.mark.parametrize("recipe", sorted(GOLDEN_LOSSES))
def test_first_losses_match_the_stored_golden_values(recipe, tiny_env, tmp_path):
    out = tmp_path / recipe
    _train(recipe, tiny_env, out, "max_steps=3", "logging_steps=1", "save_steps=3")
    got = [loss for _, loss in sorted(_logged_losses(out / "checkpoints" / "checkpoint-3").items())]
    assert got == pytest.approx(GOLDEN_LOSSES[recipe], rel=GOLDEN_REL_TOL)


def test_tiny_tokenizer_reads_only_text_not_paths(tmp_path):
    from loganalyzer.tiny_model import TinyModelConfig, build_tokenizer, corpus_texts

    rows = [{"id": "HDFS-a.log-L1", "system": "HDFS", "source": "/home/alice/checkout/data/a.log",
             "content": "081109 INFO dfs.DataNode: block blk_1 terminating"},
            {"chunk_id": "HDFS-a.log-L1", "task": "conversation",
             "output": {"messages": [{"role": "user", "content": "What failed?"},
                                     {"role": "assistant", "content": "Nothing: block blk_1 closed."}]}},
            {"chunk_id": "HDFS-a.log-L1", "task": "nlplog_qa",
             "output": [{"instruction": "Which block?", "output": "blk_1"}]}]
    moved = [{**rows[0], "source": "/tmp/ci/elsewhere/data/a.log"}, *rows[1:]]
    for name, data in (("here", rows), ("there", moved)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    assert list(corpus_texts([tmp_path / "here.jsonl"])) == [
        rows[0]["content"], "What failed?", "Nothing: block blk_1 closed.", "Which block?", "blk_1"]
    here, there = (build_tokenizer(corpus_texts([tmp_path / f"{n}.jsonl"]), 300) for n in ("here", "there"))
    assert here.backend_tokenizer.to_str() == there.backend_tokenizer.to_str()
    (tmp_path / "meta.jsonl").write_text(json.dumps({"id": "x", "source": "/a"}) + "\n")
    from loganalyzer.tiny_model import build

    with pytest.raises(ConfigError, match="no text to train the tokenizer"):
        build(TinyModelConfig(out=str(tmp_path / "m"), corpus=[str(tmp_path / "meta.jsonl")]))


def test_last_complete_checkpoint_skips_unmarked_and_foreign_dirs(tmp_path):
    for name in ("checkpoint-5", "checkpoint-10", "checkpoint-20", "checkpoint-x"):
        (tmp_path / name).mkdir()
    write_marker(tmp_path / "checkpoint-5", {"global_step": 5})
    write_marker(tmp_path / "checkpoint-10", {"global_step": 10})
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not list(tmp_path.glob("checkpoint-10/.*.tmp"))
    assert last_complete_checkpoint(tmp_path / "missing") is None


@pytest.mark.integration
def test_two_ranks_lora_ddp_tokenize_once_then_train(tiny_env, tmp_path):
    """torchrun with 2 CPU ranks (gloo), as a PyTorchJob replica runs 8: rank 0 prepares the datasets before rank 1
    starts (transformers training_args.py main_process_first: the other ranks wait at a barrier; before, every rank
    read and tokenized at once, before any process group existed), and LoRA under DDP trains with
    find_unused_parameters off
    (DDP raises at the next step if a trainable parameter got no gradient)."""
    out = tmp_path / "sft"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--module", "loganalyzer.train",
         "--config", str(CONFIGS / "sft_tiny_cpu.yaml"), f"model_name_or_path={tiny_env['model']}",
         f"train_file={tiny_env['datasets'] / 'sft_train.jsonl'}", f"output_dir={out}", "max_steps=2",
         "report_to=[none]", 'save_strategy="no"'],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ready = re.findall(r"rank (\d): datasets ready", result.stderr)
    assert ready == ["0", "1"], result.stderr[-3000:]
    saved = json.loads((out / "loganalyzer_train.json").read_text())
    assert saved["lora"] is True
    ran = json.loads((out / "trainer_args.json").read_text())  # the SFTConfig that ran, beside the recipe
    assert ran["max_steps"] == 2 and ran["seed"] == saved["seed"] and ran["bf16"] == saved["bf16"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_recipe_to_sft_and_lora_config_mapping():
    """Every TrainConfig field has one place in the mapping to trl.SFTConfig / peft.LoraConfig, and the values
    arrive: a new recipe field cannot be dropped on the way to the trainer unnoticed."""
    from loganalyzer import train

    places = [*train.SFT_FIELDS, *train.SFT_RENAMES, *train.SFT_DERIVED, *train.LORA_FIELDS, *train.OWN_FIELDS]
    assert sorted(places) == sorted(TrainConfig.model_fields), "a field is missing from, or twice in, the mapping"
    cfg = TrainConfig(mode="sft", model_name_or_path="m", train_file="t.jsonl", eval_file="v.jsonl",
                      output_dir="/tmp/o", learning_rate=3e-4, warmup_ratio=0.03, gradient_checkpointing=False,
                      max_steps=7, per_device_train_batch_size=3, seed=11, save_steps=5, bf16=False,
                      use_liger_kernel=False, report_to=["none"], lora=True, lora_r=8, lora_alpha=16,
                      lora_target_modules=["q_proj", "v_proj"])
    args = train.sft_config(cfg, assistant_only_loss=True)
    for name in set(train.SFT_FIELDS) - {"report_to"}:
        assert getattr(args, name) == getattr(cfg, name), name
    assert args.report_to == []  # transformers' spelling of ["none"]
    assert (args.warmup_steps, args.activation_checkpointing) == (0.03, False)
    assert (args.output_dir, args.data_seed, args.eval_strategy, args.eval_steps) == ("/tmp/o/checkpoints", 11,
                                                                                       "steps", 5)
    assert args.assistant_only_loss and args.packing_strategy == "bfd_split" and not args.ddp_find_unused_parameters
    lora = train.lora_config(cfg)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (8, 16, 0.05,
                                                                                      {"q_proj", "v_proj"})
    assert train.lora_config(cfg.model_copy(update={"lora": False})) is None


def test_sft_trainer_settings(tiny_env, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from loganalyzer.train import build_trainer

    assert _recipe("sft_lora").train_sampling_strategy == "group_by_length"
    cfg = _recipe("sft_tiny_cpu", model_name_or_path=str(tiny_env["model"]),
                  train_file=str(tiny_env["datasets"] / "sft_train.jsonl"), output_dir=str(tmp_path), max_steps=1,
                  report_to=["none"], train_sampling_strategy="group_by_length")
    trainer, *_ = build_trainer(cfg)
    # transformers would pick True for a PeftModel (trainer.py: not a PreTrainedModel), searching every step
    assert trainer.args.ddp_find_unused_parameters is False
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)

@pytest.mark.integration
def test_sft_lora_merges_and_keeps_the_original_chat_template(tiny_env, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sft"
    run(_recipe("sft_tiny_cpu", model_name_or_path=str(tiny_env["model"]),
                train_file=str(tiny_env["datasets"] / "sft_train.jsonl"),
                eval_file=str(tiny_env["datasets"] / "sft_val.jsonl"), output_dir=str(out), max_steps=2,
                eval_steps=2, report_to=["none"]))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())  # for KServe's LoRA mode
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    assert "{%- generation %}" not in tok.chat_template
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_env["model"]).chat_template


@pytest.mark.integration
def test_sft_on_ray_with_two_cpu_workers(tiny_env, tmp_path, monkeypatch):
    """engine: ray — Ray Train's TorchTrainer runs the same recipe on 2 ranks (gloo) on a local Ray."""
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # relative paths must reach the workers as absolute ones
    (tmp_path / "data").symlink_to(tiny_env["datasets"])
    metrics = run(_recipe("sft_tiny_cpu", model_name_or_path=str(tiny_env["model"]),
                          train_file="data/sft_train.jsonl", output_dir="sft", max_steps=2, report_to=["none"],
                          engine="ray", ray_workers=2))
    assert metrics["world_size"] == 2 and math.isfinite(metrics["train_loss"])
    assert metrics["num_input_tokens_seen"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (tmp_path / "sft" / "loss_curve.png").is_file()


def test_overlong_samples_error_or_drop(tiny_env, tmp_path):
    base = dict(model_name_or_path=str(tiny_env["model"]), train_file=str(tiny_env["datasets"] / "sft_train.jsonl"),
                output_dir=str(tmp_path / "o"), max_length=64, max_steps=1, report_to=["none"])
    with pytest.raises(ConfigError, match="exceed max_length=64"):
        run(_recipe("sft_tiny_cpu", **base))
    with pytest.raises(ConfigError):  # dropping every sample leaves nothing to train on
        run(_recipe("sft_tiny_cpu", **base, overlong="drop"))
    rejects = (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()
    assert rejects and json.loads(rejects[0])["reason"].startswith("overlong")


def test_empty_or_wrong_data_is_a_clear_error(tiny_env, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for train_file, message in ((empty, "empty"), (tiny_env["datasets"] / "sft_train.jsonl", "'text' column")):
        with pytest.raises(ConfigError, match=message):
            run(_recipe("cpt_tiny_cpu", model_name_or_path=str(tiny_env["model"]), train_file=str(train_file),
                        output_dir=str(tmp_path / "o"), report_to=["none"]))


def test_nan_loss_stops_training_with_advice():
    class State:
        global_step = 7

    guard = _callbacks()[0]
    guard.on_log(None, State(), None, logs={"loss": 1.5})
    with pytest.raises(FloatingPointError, match="step 7.*learning_rate"):
        guard.on_log(None, State(), None, logs={"loss": float("nan")})


def test_recipes_validate_and_carry_the_seed_hyperparameters():
    cpt, sft = _recipe("cpt_full_zero3"), _recipe("sft_lora")
    assert (cpt.mode, cpt.lora, cpt.learning_rate, cpt.lr_scheduler_type, cpt.warmup_ratio, cpt.num_train_epochs,
            cpt.per_device_train_batch_size, cpt.gradient_accumulation_steps, cpt.max_length, cpt.bf16,
            cpt.weight_decay, cpt.max_grad_norm, cpt.seed, cpt.gradient_checkpointing, cpt.deepspeed) == \
        ("cpt", False, 1e-5, "cosine", 0.1, 1, 8, 2, 8192, True, 0.01, 1.0, 1309, True, "zero3")
    assert (sft.mode, sft.lora, sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.lora_target_modules,
            sft.learning_rate, sft.lr_scheduler_type, sft.num_train_epochs, sft.merge_adapter) == \
        ("sft", True, 16, 32, 0.05, "all-linear", 5e-5, "linear", 3, True)
    for name in ("cpt_tiny_cpu", "sft_tiny_cpu"):
        _recipe(name)
    ds = json.loads((CONFIGS / "deepspeed" / "zero3.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    for path in CONFIGS.glob("*.yaml"):  # the opening comment block holds the exact launch command
        lines = path.read_text().splitlines()
        opening = lines[:next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
        assert any("loganalyzer train" in line or "-m loganalyzer.train" in line for line in opening), \
            f"{path.name} must open with its launch command"


def test_batched_cpt_tokenization_matches_trls_per_example_path(tiny_env):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from loganalyzer.train import pretokenize_text

    tok = AutoTokenizer.from_pretrained(tiny_env["model"])
    texts = [f"Human: q{i}\nAssistant: {'x ' * i}\n" for i in range(2500)] + ["ends with eos" + tok.eos_token]
    out = pretokenize_text(Dataset.from_dict({"text": texts}), tok)
    for i in (0, 1, 999, 1000, 2499, 2500):
        text = texts[i] if texts[i].endswith(tok.eos_token) else texts[i] + tok.eos_token
        assert out[i]["input_ids"] == tok(text)["input_ids"]  # what TRL's add_eos + tokenize produce
    assert out.column_names == ["input_ids", "labels"] and out[5]["labels"] == out[5]["input_ids"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cpt_two_bf16_steps_on_gpu(tiny_env, tmp_path):
    metrics = run(_recipe("cpt_tiny_cpu", model_name_or_path=str(tiny_env["model"]), bf16=True,
                          train_file=str(tiny_env["datasets"] / "cpt_train.jsonl"), output_dir=str(tmp_path / "g"),
                          max_steps=2, report_to=["none"]))
    assert math.isfinite(metrics["train_loss"])


CHATML = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '\\n' + m['content'] + '<|eot_id|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant\\n' }}{% endif %}")


@pytest.mark.integration
def test_sft_with_an_unpatchable_template_trains_on_the_last_turn(tiny_env, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from loganalyzer.train import LAST_TURN, build_trainer

    model = tmp_path / "chatml"
    shutil.copytree(tiny_env["model"], model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = CHATML
    tok.save_pretrained(model)
    assert training_chat_template(tok) == LAST_TURN
    cfg = _recipe("sft_tiny_cpu", model_name_or_path=str(model), output_dir=str(tmp_path / "o"), max_steps=1,
                  train_file=str(tiny_env["datasets"] / "sft_train.jsonl"), report_to=["none"])
    trainer, _, original = build_trainer(cfg)
    assert original == CHATML
    row = trainer.train_dataset[0]
    learned = [i for i, t in enumerate(row["labels"]) if t != -100]
    # The prompt (with the log) is masked out; the answer, at the end, is learned.
    assert learned and learned[-1] == len(row["input_ids"]) - 1 and learned[0] > len(row["input_ids"]) // 2
    trainer.train()


def _per_token_losses(model, input_ids, position_ids=None, **extra):
    import torch

    with torch.inference_mode():
        logits = model(input_ids=input_ids, position_ids=position_ids, **extra).logits.float()
    return torch.nn.functional.cross_entropy(logits[0, :-1], input_ids[0, 1:], reduction="none")


@pytest.mark.integration
def test_packed_cpt_rows_isolate_their_samples(tiny_env, tmp_path):
    """A packed row as our trainer builds it (TRL's bfd_split packing, padding-free collator: position_ids, no
    attention mask): each sample's per-token loss equals its loss alone. With a KV cache built in the forward pass
    (transformers 5.23, SDPA) a sample would attend to the one before it, which build_trainer turns off."""
    import torch

    from loganalyzer.train import build_trainer

    cfg = _recipe("cpt_tiny_cpu", model_name_or_path=str(tiny_env["model"]), output_dir=str(tmp_path / "o"),
                  train_file=str(tiny_env["datasets"] / "cpt_train.jsonl"), max_length=512, report_to=["none"])
    trainer, _, _ = build_trainer(cfg)
    model = trainer.model.eval()
    assert model.config.use_cache is False
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and "position_ids" in batch
    ids, pos = batch["input_ids"][:1], batch["position_ids"][:1]
    starts = (pos[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    assert len(starts) > 2, "the first packed row should hold several samples"
    packed = _per_token_losses(model, ids, pos)
    cached = _per_token_losses(model, ids, pos, use_cache=True)
    gaps = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        alone = _per_token_losses(model, ids[:, a:b])
        assert torch.allclose(packed[a:b - 1], alone, atol=1e-4), (a, b)
        gaps.append((cached[a:b - 1] - alone).abs().max().item())
    assert max(gaps[1:]) > 1e-2  # the check can fail: with a cache the later samples see the earlier ones


def test_attention_for_packed_rows():
    from loganalyzer.train import attention_for

    # no flash-attn here: a packed (padding-free) row on a GPU gets flex_attention's block mask, not SDPA's dense one
    assert __import__("importlib").util.find_spec("flash_attn") is None
    assert attention_for(gpu=True, packing=True) == "flex_attention"
    assert attention_for(gpu=True, packing=False) == "sdpa"
    assert attention_for(gpu=False, packing=True) == "sdpa"  # torch 2.13: FlexAttention has no CPU backward


def test_flex_attention_keeps_packed_samples_apart_without_a_dense_mask(tiny_env):
    """transformers 5.23 masking_utils.create_causal_mask on a padding-free row (position_ids, no attention mask):
    SDPA gets a dense (1, 1, N, N) mask, flex_attention a BlockMask whose blocks between samples are skipped. The
    flex forward on that row gives each sample the same per-token loss as alone (forward only: CPU)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.masking_utils import create_causal_mask

    n, lengths = 8192, [3000, 2000, 3192]
    pos = torch.cat([torch.arange(k) for k in lengths])[None]
    config = AutoConfig.from_pretrained(tiny_env["model"])
    embeds = torch.zeros(1, n, config.hidden_size)
    masks = {}
    for impl in ("sdpa", "flex_attention"):
        config._attn_implementation = impl
        masks[impl] = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None,
                                         past_key_values=None, position_ids=pos)
    assert isinstance(masks["sdpa"], torch.Tensor) and masks["sdpa"].shape == (1, 1, n, n)  # what we avoid
    block = masks["flex_attention"]
    assert isinstance(block, BlockMask) and block.shape == (1, 1, n, n)
    assert not any(isinstance(t, torch.Tensor) and t.numel() >= n * n for t in block.as_tuple())
    dense_blocks = (n // block.BLOCK_SIZE[0]) ** 2
    assert block.kv_num_blocks.sum() + block.full_kv_num_blocks.sum() < dense_blocks / 2  # causal + per sample

    model = AutoModelForCausalLM.from_pretrained(tiny_env["model"], attn_implementation="flex_attention").eval()
    model.config.use_cache = False
    ids = torch.randint(0, config.vocab_size, (1, 96))
    short = [40, 30, 26]
    packed = _per_token_losses(model, ids, torch.cat([torch.arange(k) for k in short])[None])
    start = 0
    for k in short:
        alone = _per_token_losses(model, ids[:, start:start + k])
        assert torch.allclose(packed[start:start + k - 1], alone, atol=1e-4), (start, k)
        start += k


@pytest.mark.integration
def test_training_needs_no_mlflow_when_tracking_is_off(tiny_env, tmp_path, monkeypatch):
    """The GPU device check carries no mlflow: without MLFLOW_TRACKING_URI nothing may import it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    metrics = run(_recipe("cpt_tiny_cpu", model_name_or_path=str(tiny_env["model"]), max_steps=2, logging_steps=1,
                          train_file=str(tiny_env["datasets"] / "cpt_train.jsonl"), output_dir=str(tmp_path / "o"),
                          max_length=256, report_to=["none"], save_strategy="no"))
    assert math.isfinite(metrics["train_loss"])
