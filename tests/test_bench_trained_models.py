"""`tokenweight bench keyfact` runs a scheme that needs models trained first (``trained_models``: TIS-DPO's
contrastive models) by training them inside its run: π₊ on the run's pairs, π₋ on the same pairs swapped, then the
row with its reward cache in the run folder."""

from __future__ import annotations

import json
import math

import torch

from tokenweight.keyfact.bench import default_schemes
from tokenweight.keyfact.bench.rows import bench_row
from tokenweight.keyfact.bench.trained_models import trained_model_rows
from tokenweight.weights import SCHEMES


def test_default_schemes_include_every_scheme_that_declares_trained_models():
    declaring = [name for name, scheme in SCHEMES.items() if scheme.tooling.trained_models]
    assert "tisdpo" in declaring and set(declaring) <= set(default_schemes())
    assert trained_model_rows(bench_row("uniform")) == {}
    rows = trained_model_rows(bench_row("tisdpo"))
    assert {key: (r.scheme, r.overrides) for key, r in rows.items()} == {
        "tisdpo_positive_model": ("uniform", {}), "tisdpo_negative_model": ("uniform", {"swap_pairs": True})}


def test_bench_run_of_tisdpo_trains_both_contrastive_models_first(tmp_path, monkeypatch, capsys):
    import tokenweight.trainer
    from tokenweight.keyfact.bench import BenchSettings, quick_settings
    from tokenweight.keyfact.bench.runs import run_one
    from tokenweight.fingerprint import model_fingerprint
    from tokenweight.keyfact import keyfact_base_model
    from tokenweight.models import load_causal_lm

    monkeypatch.setenv("TOKENWEIGHT_CACHE", str(tmp_path.parent / "keyfact-cache"))
    settings = quick_settings(BenchSettings(rows=["uniform", "tisdpo"], seeds=[0]))
    settings.train_size, settings.curve_eval_size = 16, 4
    base = str(keyfact_base_model(seed=0, size="small"))
    trained = []  # (weighting, swap_pairs, train_dataset) of every trainer built, in order
    original = tokenweight.trainer.TokenweightTrainer.__init__

    def recording_init(self, model, ref_model, args, train_dataset=None, *rest, **kwargs):
        trained.append((args.weighting, args.swap_pairs, train_dataset))
        original(self, model, ref_model, args, train_dataset, *rest, **kwargs)

    monkeypatch.setattr(tokenweight.trainer.TokenweightTrainer, "__init__", recording_init)
    folder = tmp_path / "run"
    run = run_one(settings, base, 0, "small@test", "tisdpo", "base", 0, str(folder), settings.learning_rate, "eval", 4)
    printed = capsys.readouterr()
    assert "train_runtime" not in printed.out  # no Trainer log dicts from any of the three trainings
    assert printed.err.count("bench tisdpo (base, seed 0): trained tisdpo_") == 2

    assert [(weighting, swap) for weighting, swap, _ in trained] == [("uniform", False), ("uniform", True),
                                                                     ("tisdpo", False)]
    positive_pairs, negative_pairs, tisdpo_pairs = (data.to_dict() for _, _, data in trained)
    # π₋ saw the run's own pairs with chosen and rejected exchanged, π₊ and the row the pairs as they are
    assert negative_pairs["chosen_ids"] == positive_pairs["rejected_ids"] == tisdpo_pairs["rejected_ids"]
    assert negative_pairs["rejected_ids"] == positive_pairs["chosen_ids"] == tisdpo_pairs["chosen_ids"]
    models = run["trained_models"]
    assert sorted(models) == ["tisdpo_negative_model", "tisdpo_positive_model"]
    assert models["tisdpo_positive_model"]["swapped_pairs"] == 0
    assert models["tisdpo_negative_model"]["swapped_pairs"] == 16
    assert all(m["pairs"] == 16 and m["steps"] == 2 for m in models.values())
    assert all(m["learning_rate"] == settings.learning_rate * 0.1 for m in models.values())  # a mild training
    assert " at lr " in printed.err
    assert len(run["items"]["key_rank"]) == 4 and all(1 <= r <= 40 for r in run["items"]["key_rank"])
    assert run["seconds"] > sum(m["seconds"] for m in models.values())  # the row's time includes their training

    positive, negative, reference = (load_causal_lm(path) for path in (
        models["tisdpo_positive_model"]["path"], models["tisdpo_negative_model"]["path"], base))
    assert all(not torch.equal(p, r) and not torch.equal(n, r)  # both trained, apart
               for p, n, r in zip(positive.parameters(), negative.parameters(), reference.parameters())
               if p.requires_grad)
    manifest = json.loads((folder / "tisdpo-weights" / "manifest.json").read_text())
    assert manifest["num_rows"] == 16
    assert manifest["fingerprint"]["positive_model"] == model_fingerprint(positive)
    assert manifest["fingerprint"]["negative_model"] == model_fingerprint(negative)
    assert (folder / "tisdpo-weights" / "eval" / "manifest.json").exists()

    weights = [w for row in tisdpo_pairs["chosen_weights"] + tisdpo_pairs["rejected_weights"] for w in row]
    assert min(weights) == 0.0 and len(set(weights) - {0.0}) > 1 and 0.7 - 1e-6 <= min(set(weights) - {0.0})
    assert max(weights) <= 1.3 + 1e-6  # EOS 0, the other tokens ranked onto [0.7, 1.3] (the default rank_based)
    assert run["steps"] == 2 and all(math.isfinite(value) for value in run["metrics"].values())


def test_rows_that_train_models_first_run_on_the_first_variant_unless_told_otherwise(tmp_path):
    from tokenweight.keyfact.bench import BenchSettings
    from tokenweight.keyfact.bench.benchmark import benchmark_tasks

    rows = ["uniform", "tisdpo", "tidpo:kl"]
    settings = BenchSettings(rows=rows, seeds=[0, 1], variants=["base", "noise0.2"], base_seeds=[0])
    bases = [{"seed": 0, "path": "base-model", "fingerprint": "base-model@0"}]

    def runs():
        tasks = benchmark_tasks(settings, bases, tmp_path, dict.fromkeys(rows, 1e-4))
        return sorted((t["variant"], t["label"], t["seed"]) for t in tasks)

    first_only = [("base", label, seed) for label in ("tidpo:kl", "tisdpo", "uniform") for seed in (0, 1)]
    assert runs() == first_only + [("noise0.2", "uniform", 0), ("noise0.2", "uniform", 1)]
    settings.trained_models_all_variants = True
    assert runs() == first_only + [("noise0.2", label, seed) for label in ("tisdpo", "uniform") for seed in (0, 1)]


def test_every_run_is_repeated_on_each_base_model_and_ablations_run_at_the_noise_end_point(tmp_path):
    from tokenweight.keyfact.bench import BenchSettings
    from tokenweight.keyfact.bench.benchmark import benchmark_tasks, expected_runs

    rows = ["uniform", "tidpo", "tidpo:kl"]
    settings = BenchSettings(rows=rows, seeds=[0, 1, 2], variants=["base", "noise0.2", "noise0.4"])
    assert settings.base_seeds == [0, 1]  # the shipped replicas of the built-in facts
    bases = [{"seed": b, "path": f"base-{b}", "fingerprint": f"base-{b}@x"} for b in settings.base_seeds]
    tasks = benchmark_tasks(settings, bases, tmp_path, dict.fromkeys(rows, 1e-4))
    cells = {(t["variant"], t["label"]) for t in tasks}
    assert cells == {(v, label) for v in ("base", "noise0.2", "noise0.4") for label in ("uniform", "tidpo")} | {
        ("base", "tidpo:kl"), ("noise0.4", "tidpo:kl")}
    assert len(tasks) == expected_runs(settings) == len(cells) * 2 * 3
    assert all(t["base_path"] == f"base-{t['base_seed']}" and t["base_model"] == f"base-{t['base_seed']}@x"
               for t in tasks)
    assert len({t["output_dir"] for t in tasks}) == len(tasks)  # no two runs share a folder
