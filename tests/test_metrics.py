import json

import numpy as np
import pytest
import sacrebleu

from loganalyzer.metrics import METRICS, paired_bootstrap, per_sample, score
from loganalyzer.score import main


def test_hand_checked_values():
    # Identical texts score 1 everywhere.
    s = score(["the cat sat on the mat"], ["the cat sat on the mat"], n_boot=10)
    assert all(s[k] == pytest.approx(1.0) for k in METRICS)
    # Hand-computed: "the cat sat" vs "the cat sat down"
    # ROUGE-1: P=3/3, R=3/4 -> F=6/7; ROUGE-2: P=2/2, R=2/3 -> F=0.8.
    # BLEU: precisions 3/3, 2/2, 1/1, 0/0 -> 4-gram has no candidates: BLEU 0 (no smoothing).
    # Indel ratio: 1 - (len diff 5) / (11 + 16) = 22/27.
    s = score(["the cat sat"], ["the cat sat down"], n_boot=10)
    assert s["rouge1"] == pytest.approx(6 / 7)
    assert s["rouge2"] == pytest.approx(0.8)
    assert s["bleu"] == 0.0
    assert s["fuzzy_match"] == pytest.approx(22 / 27)


def test_bleu_brevity_penalty_by_hand():
    # 5-token hypothesis, all n-grams matching a 6-token reference: precisions 1; BP = exp(1 - 6/5).
    s = score(["a b c d e"], ["a b c d e f"], n_boot=5)
    assert s["bleu"] == pytest.approx(np.exp(1 - 6 / 5))


def test_rougelsum_splits_on_newlines():
    pred, ref = "b c\na", "a\nb c"
    s = score([pred], [ref], n_boot=5)
    assert s["rougeLsum"] == pytest.approx(1.0)  # sentence-level union LCS
    assert s["rougeL"] < 1.0


def test_bleu_matches_sacrebleu_corpus_bleu_on_real_text(shared_data):
    rows = json.loads((shared_data / "fpt_json_analysis" / "val_json.json").read_text())
    refs = [r["conversations"][1]["value"] for r in rows[:60]]
    preds = [r["conversations"][1]["value"] for r in rows[1:61]]
    ours = score(preds, refs, n_boot=50)["bleu"]
    ref = sacrebleu.corpus_bleu(preds, [refs], tokenize="13a", smooth_method="none").score / 100
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 0 < ours < 1


def test_bootstrap_ci_contains_point_and_paired_p_value():
    rng = np.random.default_rng(0)
    refs = [" ".join(rng.choice(list("abcdefgh"), 12)) for _ in range(80)]
    good = [r if i % 4 else r[:-2] for i, r in enumerate(refs)]
    bad = [" ".join(rng.choice(list("abcdefgh"), 12)) for _ in range(80)]
    s = score(good, refs, n_boot=200)
    for k in METRICS:
        lo, hi = s[k + "_ci95"]
        assert lo <= s[k] <= hi
    cmp = paired_bootstrap(per_sample(bad, refs), per_sample(good, refs), n_boot=200)
    assert cmp["rouge1"]["delta"] > 0 and cmp["rouge1"]["p_value"] < 0.01
    same = paired_bootstrap(per_sample(good, refs), per_sample(good, refs), n_boot=200)
    assert same["fuzzy_match"]["p_value"] == 1.0


def test_pooled_paired_bootstrap_over_replicates():
    """Two replicates per system: the delta is the pooled one (hand-checked: mean fuzzy match over all 2 x n
    answers), one replicate is exactly paired_bootstrap, and a replicate count mismatch is refused."""
    from loganalyzer.metrics import paired_bootstrap_pooled

    refs = ["a b c d", "e f g h", "i j k l"]
    a1, a2 = per_sample(["a b c d", "x", "i j"], refs), per_sample(["a b", "e f g h", "x"], refs)
    b1, b2 = per_sample(refs, refs), per_sample(["a b c d", "e f g h", "x"], refs)
    pooled = paired_bootstrap_pooled([a1, a2], [b1, b2], n_boot=200)
    hand = (np.concatenate([b1["fuzzy_match"], b2["fuzzy_match"]]).mean()
            - np.concatenate([a1["fuzzy_match"], a2["fuzzy_match"]]).mean())
    assert pooled["fuzzy_match"]["delta"] == pytest.approx(hand) and pooled["fuzzy_match"]["delta"] > 0
    lo, hi = pooled["fuzzy_match"]["ci95"]
    assert lo <= pooled["fuzzy_match"]["delta"] <= hi
    assert paired_bootstrap_pooled([a1], [b1], n_boot=200) == paired_bootstrap(a1, b1, n_boot=200)
    with pytest.raises(ValueError, match="as many replicates"):
        paired_bootstrap_pooled([a1, a2], [b1], n_boot=10)


def test_score_cli_joins_by_id_and_rejects_mismatches(tmp_path, capsys):
    p, r = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    p.write_text('{"id": "2", "text": "x y z"}\n{"id": "1", "text": "a b c"}\n')
    r.write_text('{"id": "1", "text": "a b c"}\n{"id": "2", "text": "x y"}\n')
    main(["--predictions", str(p), "--references", str(r), "--out", str(tmp_path / "s.json"), "--n-boot", "20"])
    out = json.loads(capsys.readouterr().out)
    assert set(METRICS) <= set(out) and out["n"] == 2
    assert json.loads((tmp_path / "s.json").read_text())["rouge1"] == out["rouge1"]
    r.write_text('{"id": "1", "text": "a b c"}\n{"id": "3", "text": "x y"}\n')
    from loganalyzer.cli import entry

    with pytest.raises(SystemExit) as e:
        entry(main, ["--predictions", str(p), "--references", str(r)])
    assert e.value.code == 2
    assert "'3'" in capsys.readouterr().err


class _FakeModule:
    """Stands in for an `evaluate` module, returning fixed values we can recognise."""

    def __init__(self, result):
        self.result = result

    def compute(self, **kwargs):
        return self.result


def test_backend_auto_uses_evaluate_modules_when_they_load_else_builtin(monkeypatch):
    import loganalyzer.metrics as m

    monkeypatch.setattr(m, "_EVALUATE_MODULES", RuntimeError("offline"))
    s = score(["a b c"], ["a b c"], n_boot=5)
    assert s["metrics_backend"] == "builtin" and s["bleu"] == pytest.approx(0.0)  # 3 tokens: no 4-gram
    with pytest.raises(RuntimeError, match="offline"):
        score(["a b c"], ["a b c"], n_boot=5, backend="evaluate")
    fake = (_FakeModule({"bleu": 0.123}), _FakeModule({k: [0.5] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}))
    monkeypatch.setattr(m, "_EVALUATE_MODULES", fake)
    s = score(["a b c"], ["a b c"], n_boot=5)
    assert s["metrics_backend"] == "evaluate" and s["bleu"] == 0.123 and s["rouge2"] == 0.5
    assert score(["a b c"], ["a b c"], n_boot=5, backend="builtin")["rouge2"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        score(["a"], ["a"], backend="nltk")


def test_offline_evaluate_load_failure_is_remembered(monkeypatch):
    import loganalyzer.metrics as m

    monkeypatch.setattr(m, "_EVALUATE_MODULES", None)
    assert score(["x y"], ["x y"], n_boot=5)["metrics_backend"] == "builtin"
    assert isinstance(m._EVALUATE_MODULES, Exception)  # not retried for every call
