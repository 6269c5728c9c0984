"""`tokenweight bench keyfact --quick`: the report's numbers are the per-run results, uniform's key weight share is
1/len, and --update_docs rewrites only the KeyFact section."""

from __future__ import annotations

import json
import statistics

import pytest

from tokenweight.bench import DOCS_BEGIN, DOCS_END, METRICS
from tokenweight.cli import main


def test_bench_quick_report_equals_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))  # the small base model builds in seconds
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# Benchmarks\n\n## Other\nkept\n\n{DOCS_BEGIN}\nold keyfact text\n{DOCS_END}\n\n## Tail\nkept too\n")
    out = tmp_path / "report"
    assert main(["bench", "keyfact", "--quick", "--schemes", "uniform,attention", "--output_dir", str(out),
                 "--update_docs", "--docs", str(docs)]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["scheme"], r["seed"]) for r in runs) == [("attention", 0), ("attention", 1),
                                                              ("uniform", 0), ("uniform", 1)]
    assert all(r["variant"] == "base" and r["steps"] == 4 for r in runs)  # 32 pairs / batch 8, one epoch

    table = (out / "report.md").read_text()
    for scheme in ("uniform", "attention"):
        for metric in METRICS:
            values = [r["metrics"][metric] for r in runs if r["scheme"] == scheme]
            stats = results["summary"]["base"][scheme][metric]
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["std"] == pytest.approx(statistics.stdev(values))
        cells = " | ".join(f"{results['summary']['base'][scheme][m]['mean']:.3f} ± "
                           f"{results['summary']['base'][scheme][m]['std']:.3f}" for m in METRICS)
        assert f"| base | {scheme} | {cells} |" in table
    for run in runs:  # the curve's last point is at the last step; the first is the reference (pref_acc 0.5)
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert run["curve"][0]["pref_acc"] == 0.5

    # uniform: the key weight share is 1 / (chosen completion length), averaged over the held-out pairs
    from tokenweight.data import tokenize_preference_dataset
    from tokenweight.keyfact import build_keyfact
    from tokenweight.models import load_tokenizer
    tokenizer = load_tokenizer(results["base_model"])
    for seed in (0, 1):
        pairs, _ = tokenize_preference_dataset(build_keyfact(n_train=1, n_eval=16, seed=seed)["eval"], tokenizer,
                                               max_length=128)
        expected = statistics.fmean(1 / len(ids) for ids in pairs["chosen_ids"])
        run = next(r for r in runs if r["scheme"] == "uniform" and r["seed"] == seed)
        assert run["metrics"]["key_weight_share"] == pytest.approx(expected)

    assert (out / "curves_base.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["attention_pair0.png", "uniform_pair0.png"]
    text = docs.read_text()
    assert "## Other\nkept" in text and "## Tail\nkept too" in text and "old keyfact text" not in text
    assert text.count(DOCS_BEGIN) == 1 and "tokenweight bench keyfact --schemes uniform,attention" in text
    assert table.strip() in text
