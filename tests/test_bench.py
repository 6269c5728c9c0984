"""`tokenweight bench keyfact --quick`: the report's numbers are the per-item results of the runs (means, paired
differences), the oracle's weights are key-only, and --update_docs rewrites only the KeyFact section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenweight.keyfact.bench import DOCS_BEGIN, DOCS_END
from tokenweight.keyfact.bench.report import cell
from tokenweight.cli import main


def test_bench_quick_report_equals_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))  # the small base model builds in seconds
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# Benchmarks\n\n## Other\nkept\n\n{DOCS_BEGIN}\nold keyfact text\n{DOCS_END}\n\n## Tail\nkept too\n")
    out = tmp_path / "report"
    assert main(["bench", "keyfact", "--quick", "--schemes", "uniform,oracle,attention", "--output_dir", str(out),
                 "--update_docs", "--docs", str(docs)]) == 0
    assert "train_runtime" not in capsys.readouterr().out  # no per-run Trainer log dicts, only the progress bar
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["label"], r["seed"]) for r in runs) == [(label, seed) for label in ("attention", "oracle",
                                                                                           "uniform") for seed in (0, 1)]
    assert all(r["variant"] == "base" and r["steps"] == 4 for r in runs)  # 32 pairs / batch 8, one epoch
    for run in runs:  # the curve's last point is at the last step; the first is the reference (pref_acc 0.5)
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert run["curve"][0]["pref_acc"] == 0.5

    items = np.load(out / "items.npz")
    analysis = results["analysis"]["base"]
    report = (out / "report.md").read_text()
    for label in ("uniform", "oracle", "attention"):
        entry = analysis["rows"][label]
        for metric in ("forced_acc", "answer_mass", "kl_nonkey", "key_acc", "key_share"):
            matrix = np.stack([items[f"base|{label}|{seed}|{metric}"] for seed in (0, 1)])  # [seeds, 16 items]
            assert matrix.shape == (2, 16)
            assert entry["means"][metric] == pytest.approx(matrix.mean())
            if label != "uniform":
                uniform = np.stack([items[f"base|uniform|{seed}|{metric}"] for seed in (0, 1)])
                delta = entry["deltas"][metric]
                assert delta["delta"] == pytest.approx((matrix - uniform).mean())
                assert delta["low"] <= delta["delta"] <= delta["high"]
        assert f"| {label} | {cell(entry, 'forced_acc')} | {cell(entry, 'lure_margin')} |" in report
    # weights: the oracle puts all of the chosen weight on the key (share 1, relative weight = completion length);
    # uniform's key weight is the mean weight (relative 1) and 1/(tokens from the key onward) of the share
    assert np.allclose(items["base|oracle|0|key_share"], 1.0)
    assert (items["base|oracle|0|key_weight_rel"] > 5).all()
    assert np.allclose(items["base|uniform|1|key_weight_rel"], 1.0)
    assert (items["base|uniform|1|key_share"] < 0.5).all()
    assert np.allclose(items["reference|pref_acc"], 0.5) and np.allclose(items["reference|kl_nonkey"], 0.0)
    assert "oracle_separates" in analysis and "Oracle check" in report
    assert results["base_model_judge"]["judge_verdict_accuracy_train"] is None  # small: no judge stage
    assert f"Base model `{Path(results['base_model']).name}` (size `small`" in report
    assert "It has no judge stage" in report
    assert 0 <= analysis["ceiling"]["unlearned"] <= 1

    assert (out / "curves_base.png").stat().st_size > 1000 and (out / "forest.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["attention_pair0.png", "oracle_pair0.png",
                                                                     "uniform_pair0.png"]
    text = docs.read_text()
    assert "## Other\nkept" in text and "## Tail\nkept too" in text and "old keyfact text" not in text
    assert text.count(DOCS_BEGIN) == 1 and "tokenweight bench keyfact --schemes uniform,oracle,attention" in text
    assert report.strip() in text


def test_bench_refuses_unknown_rows_and_a_missing_baseline(tmp_path, capsys):
    for schemes, message in (("uniform,nope", "unknown row 'nope'"), ("uniform,otpo:nope", "no ablation"),
                             ("uniform,column", "weight columns"), ("otpo", "must include 'uniform'")):
        assert main(["bench", "keyfact", "--quick", "--schemes", schemes, "--output_dir", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
