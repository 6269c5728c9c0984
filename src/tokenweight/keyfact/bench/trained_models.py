"""The models a row's scheme needs trained before it runs (``SchemeTooling.trained_models``; TIS-DPO's contrastive
models π₊ and π₋), trained inside that row's own run so that every run stays self-contained (with ``--jobs N`` a run
is one task in one worker; no run waits for another).

Each declared model is trained through the bench's own training path
(:func:`~tokenweight.keyfact.bench.settings.run_config`, the run pipeline's data loading, the scheme's data
preparation and :func:`~tokenweight.pipeline.build_trainer`): the
same base model, variant and seed as the run (so the same training pairs, and the same training order), the bench's
budget learning rate × ``BenchSettings.trained_models_lr_factor`` (0.1: a mild training, as upstream's lr 5e-7 for
one epoch), the declaration's overrides on top (``swap_pairs`` for π₋); it is saved to
``<run folder>/<settings key>/`` and that folder is set as the settings key of the row's run. The bench's own
``uniform`` run of the same variant and seed is *not* reused as π₊: it runs in another worker (no order between
workers), saves no model, and under ``--tune`` its learning rate is tuned apart; π₊ is trained again (the same
training at a tenth of the budget learning rate, one more uniform-cost training per run).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from pathlib import Path

from tokenweight.keyfact.bench.rows import BenchRow
from tokenweight.keyfact.bench.settings import BenchSettings, run_config


def trained_model_rows(row: BenchRow) -> dict[str, BenchRow]:
    """``{settings key: BenchRow}``: one row per model that ``row``'s scheme declares (``{}`` for most schemes), its
    scheme the declaration's ``weighting`` (the config's default when the declaration names none)."""
    from tokenweight.config import TokenweightConfig
    from tokenweight.weights.base import scheme_class

    default_weighting = TokenweightConfig.__dataclass_fields__["weighting"].default
    rows = {}
    for key, overrides in scheme_class(row.scheme).tooling.trained_models.items():
        rest = {k: v for k, v in overrides.items() if k != "weighting"}
        rows[key] = BenchRow(f"{row.label}/{key}", overrides.get("weighting", default_weighting), rest)
    return rows


def train_declared_models(settings: BenchSettings, base_path: str, row: BenchRow, variant: str, seed: int,
                          output_dir: Path) -> tuple[BenchRow, dict[str, dict]]:
    """``(row with every declared model's folder set under its settings key, {settings key: what was trained})``;
    ``(row, {})`` when the scheme declares none. What was trained: scheme, overrides, folder, training pairs, pairs
    swapped, learning rate, steps, seconds (also printed to stderr)."""
    from transformers import PrinterCallback

    from tokenweight.models import load_tokenizer
    from tokenweight.pipeline import build_trainer, load_run_splits, prepare_split

    trained = {}
    for key, model_row in trained_model_rows(row).items():
        start = time.perf_counter()
        folder = output_dir / key
        learning_rate = settings.learning_rate * settings.trained_models_lr_factor
        config = run_config(settings, model_row, variant, seed, folder, learning_rate)
        splits = load_run_splits(config)
        tokenizer = load_tokenizer(base_path)
        train = prepare_split(config, base_path, tokenizer, splits.train, "train")
        trainer = build_trainer(config, base_path, tokenizer, train)
        trainer.remove_callback(PrinterCallback)  # the run's one stderr line below says what was trained
        trainer.train()
        trainer.save_model(str(folder))
        trained[key] = {"weighting": model_row.scheme, "overrides": model_row.overrides, "path": str(folder),
                        "pairs": len(train), "swapped_pairs": splits.swapped_pairs.get("train", 0),
                        "learning_rate": learning_rate,
                        "steps": trainer.state.global_step, "seconds": time.perf_counter() - start}
        settings_text = "".join(f" {name}={value}" for name, value in model_row.overrides.items())
        print(f"bench {row.label} ({variant}, seed {seed}): trained {key} = {model_row.scheme}{settings_text} "
              f"on {len(train)} pairs ({trained[key]['swapped_pairs']} swapped) at lr {learning_rate:g}, "
              f"{trainer.state.global_step} steps, {trained[key]['seconds']:.0f} s -> {folder}", file=sys.stderr)
        del trainer
        gc.collect()
    paths = {key: entry["path"] for key, entry in trained.items()}
    return dataclasses.replace(row, overrides={**row.overrides, **paths}), trained
