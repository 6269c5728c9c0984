"""`tokenweight bench keyfact --quick`: every row runs on two base models, the report's numbers are the per-item
results of the runs (means, paired differences), the oracle's weights are key-only, --update_docs rewrites only the
KeyFact sections, and --report_from rebuilds the report of a finished folder without training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenweight.keyfact.bench import DOCS_BEGIN, DOCS_END
from tokenweight.keyfact.bench.report import CLAIMS_BEGIN, CLAIMS_END, cell
from tokenweight.cli import main
from tokenweight.keyfact.shipped import replica_seeds


def test_bench_quick_report_equals_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path / "cache"))  # the small base model builds in seconds
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# Benchmarks\n\n## Other\nkept\n\n{DOCS_BEGIN}\nold keyfact text\n{DOCS_END}\n\n## Tail\nkept too\n")
    claims_docs = tmp_path / "KEYFACT.md"
    claims_docs.write_text(f"# KeyFact\n\n## Paper claims\n\n{CLAIMS_BEGIN}\nold claims\n{CLAIMS_END}\n\n## After\n")
    out = tmp_path / "report"
    assert main(["bench", "keyfact", "--quick", "--schemes", "uniform,oracle,attention", "--output_dir", str(out),
                 "--update_docs", "--docs", str(docs), "--claims_docs", str(claims_docs)]) == 0
    printed = capsys.readouterr().out
    assert "train_runtime" not in printed  # no per-run Trainer log dicts, only the progress bar
    assert "12 runs: 2 base model(s) × 2 seed(s)" in printed
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert replica_seeds("small") == (0, 1)  # --quick runs on the two shipped small base models
    assert sorted((r["label"], r["base_seed"], r["seed"]) for r in runs) == [
        (label, base, seed) for label in ("attention", "oracle", "uniform") for base in (0, 1) for seed in (0, 1)]
    assert all(r["variant"] == "base" and r["steps"] == 4 for r in runs)  # 32 pairs / batch 8, one epoch
    fingerprints = {b["seed"]: b["fingerprint"] for b in results["base_models"]}
    assert sorted(fingerprints) == [0, 1] and len(set(fingerprints.values())) == 2
    assert all(r["base_model"] == fingerprints[r["base_seed"]] for r in runs)
    assert "--seeds 2 --base_seeds 0,1" in results["command"]  # what ran, not the default of 3 seeds
    for run in runs:  # the curve's last point is at the last step; the first is the reference (pref_acc 0.5)
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert run["curve"][0]["pref_acc"] == 0.5

    items = np.load(out / "items.npz")
    analysis = results["analysis"]["base"]
    report = (out / "report.md").read_text()
    def matrix(label, metric):  # [base models, seeds, 16 items]
        return np.array([[items[f"base|{label}|{base}|{seed}|{metric}"] for seed in (0, 1)] for base in (0, 1)])

    for label in ("uniform", "oracle", "attention"):
        entry = analysis["rows"][label]
        for metric in ("forced_acc", "answer_mass", "kl_nonkey", "key_acc", "key_share"):
            values = matrix(label, metric)
            assert values.shape == (2, 2, 16)
            assert entry["means"][metric] == pytest.approx(values.mean())
            if label != "uniform":
                difference = values - matrix("uniform", metric)
                delta = entry["deltas"][metric]
                assert delta["delta"] == pytest.approx(difference.mean())
                assert delta["per_base"] == pytest.approx(difference.mean(axis=(1, 2)).tolist())
                assert delta["low"] <= delta["delta"] <= delta["high"]
        for family, value in entry["family"]["key_weight_rel"].items():  # weights per family
            rows = [k for k, f in enumerate(results["eval_items"]["family"]) if f == family]
            assert value == pytest.approx(matrix(label, "key_weight_rel")[:, :, rows].mean())
        assert f"| {label} | {cell(entry, 'forced_acc')} | {cell(entry, 'lure_margin')} |" in report
    # weights: the oracle puts all of the chosen weight on the key (share 1, relative weight = completion length);
    # uniform's key weight is the mean weight (relative 1) and 1/(tokens from the key onward) of the share
    assert np.allclose(items["base|oracle|1|0|key_share"], 1.0)
    assert (items["base|oracle|0|0|key_weight_rel"] > 5).all()
    assert np.allclose(items["base|uniform|1|1|key_weight_rel"], 1.0)
    assert (items["base|uniform|0|1|key_share"] < 0.5).all()
    for base in (0, 1):
        assert np.allclose(items[f"reference|{base}|pref_acc"], 0.5)
        assert np.allclose(items[f"reference|{base}|kl_nonkey"], 0.0)
    assert "oracle_separates" in analysis and "Oracle check" in report
    assert all(b["judge"]["judge_verdict_accuracy_train"] is None for b in results["base_models"])  # small: no judge
    for base in results["base_models"]:
        assert f"- base seed {base['seed']}: `{base['fingerprint']}`; no judge stage" in report
    prompts = results["eval_items"]["prompt"]
    assert f"16 held-out pairs on {len(set(prompts))} distinct prompts" in report
    assert 0 <= analysis["ceiling"]["unlearned"] <= 1
    claims = {(c["row"], c["metric"]): c for c in results["claims"]}
    attention = claims["attention", "key_weight_rel"]
    assert attention["difference"] == analysis["rows"]["attention"]["deltas"]["key_weight_rel"]
    assert claims["otpo", "gen_len"]["verdict"] == "not run"  # otpo did not run

    assert (out / "curves_base.png").stat().st_size > 1000 and (out / "forest.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["attention_pair0.png", "oracle_pair0.png",
                                                                     "uniform_pair0.png"]
    text = docs.read_text()
    assert "## Other\nkept" in text and "## Tail\nkept too" in text and "old keyfact text" not in text
    assert text.count(DOCS_BEGIN) == 1 and "tokenweight bench keyfact --schemes uniform,oracle,attention" in text
    assert report.strip() in text
    claims_text = claims_docs.read_text()
    assert "old claims" not in claims_text and claims_text.endswith("\n\n## After\n")
    assert "| AttentionPO | the judge's attention puts more weight on the key than uniform |" in claims_text

    # --report_from rebuilds the same report from the folder, trains nothing; --compare sets it beside another
    (out / "report.md").unlink()
    (out / "forest.png").unlink()
    assert main(["bench", "keyfact", "--report_from", str(out)]) == 0
    assert (out / "report.md").read_text() == report and (out / "forest.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["analysis"] == results["analysis"]
    assert main(["bench", "keyfact", "--report_from", str(out), "--compare", str(out)]) == 0
    compared = json.loads((out / "results.json").read_text())["fact_sets"][0]
    assert sorted(compared["rows"]) == ["attention", "oracle"]
    assert "key_acc undefined, answer_mass undefined" in (out / "report.md").read_text()  # 2 shared rows

    # a benchmark run in parts (one variant per invocation) merges into one folder: here a copy of the run as if it
    # had been the `verbosity` variant of a second invocation
    part = tmp_path / "part"
    part.mkdir()
    saved = json.loads((out / "results.json").read_text())
    saved["settings"]["variants"] = ["verbosity"]
    saved["runs"] = [{**r, "variant": "verbosity"} for r in saved["runs"]]
    (part / "results.json").write_text(json.dumps(saved))
    np.savez(part / "items.npz", **{k.replace("base|", "verbosity|", 1) if not k.startswith("reference") else k:
                                    items[k] for k in items.files})
    merged = tmp_path / "merged"
    assert main(["bench", "keyfact", "--report_from", str(out), "--report_from", str(part),
                 "--output_dir", str(merged)]) == 0
    both = json.loads((merged / "results.json").read_text())
    assert both["settings"]["variants"] == ["base", "verbosity"] and len(both["merged_from"]) == 2
    assert both["analysis"]["base"] == results["analysis"]["base"]
    assert both["analysis"]["verbosity"]["rows"] == results["analysis"]["base"]["rows"]
    assert "Commands (one benchmark in several invocations" in (merged / "report.md").read_text()
    saved["settings"]["seeds"] = [0, 1, 2]
    (part / "results.json").write_text(json.dumps(saved))
    assert main(["bench", "keyfact", "--report_from", str(out), "--report_from", str(part),
                 "--output_dir", str(tmp_path / "refused")]) == 2
    assert "has seeds = [0, 1, 2]" in capsys.readouterr().err


def test_bench_refuses_unknown_rows_and_a_missing_baseline(tmp_path, capsys):
    for schemes, message in (("uniform,nope", "unknown row 'nope'"), ("uniform,otpo:nope", "no ablation"),
                             ("uniform,column", "weight columns"), ("otpo", "must include 'uniform'")):
        assert main(["bench", "keyfact", "--quick", "--schemes", schemes, "--output_dir", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_report_from_refuses_a_folder_without_results(tmp_path, capsys):
    assert main(["bench", "keyfact", "--report_from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenweight: error: --report_from:") and "results.json does not exist" in err
    assert main(["bench", "keyfact", "--compare", str(tmp_path)]) == 2
    assert "--compare needs --report_from" in capsys.readouterr().err


def test_a_killed_benchmark_resumes_from_the_runs_it_finished(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["bench", "keyfact", "--quick", "--schemes", "uniform", "--output_dir", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    records = sorted((out / "runs" / "base").glob("*/run.json"))
    assert [p.parent.name for p in records] == [f"uniform-base{b}-seed{s}" for b in (0, 1) for s in (0, 1)]
    # killed after three runs: the fourth run's record and the report never got written
    records[-1].unlink()
    for name in ("results.json", "items.npz", "report.md"):
        (out / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in records[:-1]}
    capsys.readouterr()
    assert main(argv) == 0
    assert "3 of 4 runs already finished in their folders" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in records[:-1]} == kept and records[-1].is_file()  # only one trained
    again = json.loads((out / "results.json").read_text())
    for before, after in zip(first["runs"], again["runs"]):
        assert (after["base_seed"], after["seed"]) == (before["base_seed"], before["seed"])
        assert after["metrics"] == pytest.approx(before["metrics"], abs=1e-6)
    # another budget names other runs: nothing is reused
    assert main([*argv, "--train_size", "16"]) == 0
    assert "already finished" not in capsys.readouterr().out
