"""One KeyFact run (a row on a variant and a seed): train from the base model, then measure it item by item.

The run's training data is drawn with the seed (``keyfact_seed``, and the training order ``seed``); the evaluation
set is fixed (KeyFact's ``eval`` split drawn by ``BenchSettings.eval_seed``), the same for every run, so every metric is a list over the same items
and rows compare pairwise (:mod:`tokenweight.keyfact.bench.stats`). The base model is also the frozen reference: the
trainer (:func:`tokenweight.pipeline.build_trainer`, as ``tokenweight train`` builds it) loads it only for a scheme
that ``uses_reference``, and a copy of it always *measures* (``pref_acc``, ``kl_nonkey``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import datasets
import numpy
import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from tokenweight.keyfact.bench.rows import BenchRow, baseline_label, bench_row, oracle_column
from tokenweight.keyfact.bench.settings import BenchSettings, run_config

#: Means of these item metrics are measured along training (the learning curves).
CURVE_METRICS = ("forced_acc", "key_acc", "answer_mass", "pref_acc")


def evaluation_rows(settings: BenchSettings, split: str, size: int) -> datasets.Dataset:
    """The first ``size`` pairs of KeyFact's held-out ``split`` (``eval`` or ``validation``, disjoint items) drawn by
    ``settings.eval_seed``: held-out paraphrases, filler and subjects, clean; the same for every training seed."""
    from tokenweight.keyfact import build_keyfact
    sizes = {"n_eval": size if split == "eval" else 1, "n_validation": size if split == "validation" else 1}
    return build_keyfact(facts_path=settings.facts, n_train=1, eval_seed=settings.eval_seed, **sizes)[split]


def with_oracle_weights(rows: datasets.Dataset, row: BenchRow, tokenizer, facts) -> datasets.Dataset:
    """``rows`` with the oracle's key-only ``chosen_weights``/``rejected_weights`` columns (unchanged otherwise)."""
    if row.oracle is None:
        return rows
    from tokenweight.keyfact import key_slots

    for side in ("chosen", "rejected"):
        rows = rows.add_column(f"{side}_weights", [oracle_column(index, length, row.oracle)
                                                   for index, length in key_slots(tokenizer, rows, facts, side)])
    return rows


def item_metrics(model, reference, tokenizer, pairs, rows, settings: BenchSettings, scheme=None) -> dict[str, list]:
    """Per evaluation item: :func:`~tokenweight.keyfact.keyfact_item_metrics`, ``pref_acc`` (1 when the unweighted
    implicit reward ranks the pair right, ½ on a tie; needs ``reference``) and, with ``scheme``, the key weight's
    ``key_share`` (of the weight from the key onward), ``key_weight_rel`` (over the mean weight) and ``key_rank``
    (the key's rank by weight, 1 = the heaviest token) on the chosen completion, with the weights the scheme computes for ``model``. ``pairs``: ``rows`` tokenized, same order."""
    from tokenweight.evaluate import pair_token_weights, score_pairs
    from tokenweight.keyfact import key_slots, key_weight_rank, key_weight_stats, keyfact_item_metrics

    if list(pairs["row_index"]) != list(range(len(rows))):
        raise ValueError("KeyFact bench: tokenization dropped or reordered evaluation rows; raise --max_length")
    items = keyfact_item_metrics(model, reference, tokenizer, rows, settings.facts, settings.max_new_tokens,
                                 batch_size=256)  # greedy decoding of a tiny model is per-call overhead on a CPU
    if reference is not None:
        scores = score_pairs(model, reference, pairs, tokenizer.pad_token_id, batch_size=64, progress=False)
        reward_c, reward_r = scores.policy_chosen - scores.ref_chosen, scores.policy_rejected - scores.ref_rejected
        items["pref_acc"] = ((reward_c > reward_r).float() + 0.5 * (reward_c == reward_r).float()).tolist()
    if scheme is not None:
        weights = pair_token_weights(scheme, model, pairs, tokenizer.pad_token_id, 64, progress=False)
        keys = [index for index, _ in key_slots(tokenizer, rows, settings.facts)]
        items["key_share"], items["key_weight_rel"] = key_weight_stats([c for c, _ in weights], keys)
        items["key_rank"] = key_weight_rank([c for c, _ in weights], keys)
        items["_weights"] = weights
    return items


class CurveCallback(TrainerCallback):
    """Evaluates ``evaluate(model)`` at step 0 and at ``points`` evenly spaced steps up to the last one."""

    def __init__(self, evaluate, points: int):
        self.evaluate, self.points, self.steps, self.curve = evaluate, points, set(), []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.steps = {round(state.max_steps * (k + 1) / self.points) for k in range(self.points)}
        self.curve.append({"step": 0, **self.evaluate(model)})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.curve.append({"step": state.global_step, **self.evaluate(model)})


def _means(items: dict[str, list], names) -> dict[str, float]:
    return {name: sum(items[name]) / len(items[name]) for name in names if name in items}


def run_one(settings: BenchSettings, base_path: str, base_seed: int, base_model: str, label: str, variant: str,
            seed: int, output_dir: str, learning_rate: float, eval_split: str, eval_size: int,
            heatmap_pairs: int = 0) -> dict:
    """Train row ``label`` on ``variant`` with ``seed`` from the base model at ``base_path`` (base seed
    ``base_seed``, fingerprint ``base_model``, which the result names); returns its per-item metrics on the
    ``eval_size`` pairs of held-out ``eval_split``, their means, the learning curve and ``heatmap_pairs`` pairs' weights. A scheme that
    declares ``trained_models`` first gets them trained here, under ``output_dir``
    (:func:`~tokenweight.keyfact.bench.trained_models.train_declared_models`)."""
    from transformers import PrinterCallback

    from tokenweight.keyfact import key_slot
    from tokenweight.keyfact.bench.trained_models import train_declared_models
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import build_trainer, load_run_splits, prepare_split

    start, cpu_start = time.perf_counter(), time.process_time()  # the models trained first count in the row's time
    row, trained_models = train_declared_models(settings, base_path, bench_row(label), variant, seed, Path(output_dir))
    config = run_config(settings, row, variant, seed, Path(output_dir), learning_rate)
    tokenizer = load_tokenizer(base_path)
    train_rows = with_oracle_weights(load_run_splits(config).train, row, tokenizer, settings.facts)
    eval_rows = with_oracle_weights(evaluation_rows(settings, eval_split, eval_size), row, tokenizer, settings.facts)
    # every split through the scheme's data preparation, as `tokenweight train` does (AttentionPO: the judge's cache)
    train = prepare_split(config, base_path, tokenizer, train_rows, "train")
    evaluation = prepare_split(config, base_path, tokenizer, eval_rows, "eval")
    reference = load_causal_lm(base_path)  # measures every row (the trainer loads its own when the scheme has one)
    curve_pairs = evaluation.select(range(min(settings.curve_eval_size, len(evaluation))))
    curve_rows = eval_rows.select(range(len(curve_pairs)))
    curve = CurveCallback(lambda model: _means(item_metrics(model, reference, tokenizer, curve_pairs, curve_rows,
                                                            settings), CURVE_METRICS), settings.curve_points)
    trainer = build_trainer(config, base_path, tokenizer, train, callbacks=[curve])
    trainer.remove_callback(PrinterCallback)  # hundreds of runs: the benchmark's progress bar is the output
    trainer.train()
    items = item_metrics(trainer.model, reference, tokenizer, evaluation, eval_rows, settings, trainer.scheme)
    weights = items.pop("_weights")
    pairs = []
    for k in range(min(heatmap_pairs, len(evaluation))):
        pair, raw = evaluation[k], eval_rows[k]
        pairs.append({"prompt_ids": pair["prompt_ids"], "chosen_ids": pair["chosen_ids"],
                      "rejected_ids": pair["rejected_ids"], "chosen_weights": weights[k][0],
                      "rejected_weights": weights[k][1],
                      "chosen_key": key_slot(tokenizer, raw, settings.facts, "chosen")[0],
                      "rejected_key": key_slot(tokenizer, raw, settings.facts, "rejected")[0]})
    return {"label": label, "scheme": row.scheme, "variant": variant, "base_seed": base_seed,
            "base_model": base_model, "seed": seed, "learning_rate": learning_rate,
            "metrics": _means(items, items), "items": items, "curve": curve.curve, "steps": trainer.state.global_step,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, "pairs": pairs,
            "trained_models": trained_models}


def reference_items(settings: BenchSettings, base_path: str) -> dict[str, list]:
    """The base model's per-item metrics on the fixed evaluation set (no training; ``kl_nonkey`` 0)."""
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import tokenize_split

    config = run_config(settings, bench_row(baseline_label()), settings.variants[0], 0, Path("unused"),
                        settings.learning_rate)
    tokenizer = load_tokenizer(base_path)
    rows = evaluation_rows(settings, "eval", settings.eval_size)
    pairs = tokenize_split(config, tokenizer, rows, "eval")
    items = item_metrics(load_causal_lm(base_path), None, tokenizer, pairs, rows, settings)
    return {**items, "pref_acc": [0.5] * len(rows)}  # the reference is its own reference: every pair ties


def _one_thread() -> None:
    torch.set_num_threads(1)


#: Settings that choose which runs a benchmark makes, not what one run does (a finished run is reused whatever they are).
RUN_SELECTION = ("rows", "seeds", "variants", "base_seeds", "jobs", "bootstrap", "tune",
                 "trained_models_all_variants", "ablation_variants")


def run_identity(task: dict) -> dict:
    """What decides a run's result: the task (row, variant, base model fingerprint, seed, learning rate, evaluation
    split and size, heatmap pairs) and the settings other than :data:`RUN_SELECTION`. Not the code version: a
    finished run is reused after a code change."""
    settings = {k: v for k, v in dataclasses.asdict(task["settings"]).items() if k not in RUN_SELECTION}
    return {**{k: v for k, v in task.items() if k not in ("settings", "base_path", "output_dir")},
            "settings": settings}


def save_run(task: dict, run: dict) -> None:
    """Keep a finished run in its folder: ``run_items.npz`` (per-item metrics), then ``run.json`` (the rest and
    :func:`run_identity`), written under a temporary name and renamed, so a killed benchmark leaves only whole runs."""
    folder = Path(task["output_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    numpy.savez_compressed(folder / "run_items.npz", **{k: numpy.asarray(v) for k, v in run["items"].items()})
    staging = folder / "run.json.tmp"
    staging.write_text(json.dumps({"identity": run_identity(task),
                                   "run": {k: v for k, v in run.items() if k != "items"}}))
    staging.rename(folder / "run.json")


def saved_run(task: dict) -> dict | None:
    """The run ``task`` names, finished and kept by :func:`save_run` in an earlier (killed) benchmark, or ``None``."""
    record = Path(task["output_dir"]) / "run.json"
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    if saved["identity"] != json.loads(json.dumps(run_identity(task))):
        return None
    items = numpy.load(Path(task["output_dir"]) / "run_items.npz")
    return {**saved["run"], "items": {k: items[k].tolist() for k in items.files}}


def _run_task(task: dict) -> dict:
    run = run_one(**task)
    save_run(task, run)
    return run


def execute(tasks: list[dict], jobs: int, description: str) -> list[dict]:
    """Every ``run_one(**task)``, in ``jobs`` worker processes of one thread each (in this process for 1), in the
    order of ``tasks``; each finished run is kept in its folder (:func:`save_run`), and a run already kept there by
    a benchmark that was killed is read back instead of trained again (:func:`saved_run`)."""
    results = [saved_run(task) for task in tasks]
    todo = [k for k, run in enumerate(results) if run is None]
    if len(todo) < len(tasks):
        print(f"{description}: {len(tasks) - len(todo)} of {len(tasks)} runs already finished in their folders "
              "(kept by an earlier, interrupted call): reused")
    bar = tqdm(total=len(todo), desc=description)
    if jobs == 1:
        for k in todo:
            task = tasks[k]
            bar.set_postfix_str(f"{task['variant']} {task['label']} base {task['base_seed']} seed {task['seed']}")
            results[k] = _run_task(task)
            bar.update()
        bar.close()
        return results
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        futures = {pool.submit(_run_task, tasks[k]): k for k in todo}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update()
    bar.close()
    return results
