"""The KeyFact base model: a tiny Llama trained from scratch by SFT (:mod:`.build`), shipped or built once and cached.

A build is named ``keyfact-<size>-<digest>`` (:func:`~.build.build_name`: the digest covers every setting, the facts,
the chat and judge templates and the source of the modules that decide the weights). The builds listed in
:data:`~.shipped.SHIPPED_BUILDS` (the built-in facts files) come with the package, in
``tokenweight/keyfact/models/<name>``: nothing is trained for them. Any other build (``--facts`` of your own, another
seed) is trained on first use and cached in ``<root>/<name>``, where ``<root>`` is ``cache_dir`` if given, else
``$TOKENWEIGHT_CACHE``, else ``platformdirs.user_cache_dir("tokenweight")``. Each folder holds ``save_pretrained``
output (model + tokenizer) and the build record :data:`SETTINGS_FILE`, so the model loads through the same code path
as a hub model (``AutoModelForCausalLM.from_pretrained(path)``). A folder is written under a temporary name and
renamed into place, so an interrupted build never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import platformdirs
import torch
import transformers

from .build import build_name, build_settings, train_base_model
from .facts import resolve_facts

SETTINGS_FILE = "keyfact_build.json"
SHIPPED_DIR = Path(__file__).with_name("models")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$TOKENWEIGHT_CACHE``, else the platform's user cache dir for ``tokenweight``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TOKENWEIGHT_CACHE"):
        return Path(os.environ["TOKENWEIGHT_CACHE"])
    return Path(platformdirs.user_cache_dir("tokenweight"))


def keyfact_base_model(cache_dir: str | Path | None = None, seed: int = 0, size: str = "default",
                       p_correct: float = 0.5, judge_fraction: float = 0.1, filler_min: int = 1,
                       filler_max: int = 3, facts_path: str | Path | dict[str, Any] | None = None,
                       progress: bool = True, shipped: bool = True) -> Path:
    """Path of the KeyFact base model (model + tokenizer): the shipped one, else the cached one, trained on first use.

    Args:
        cache_dir: cache root (see the module docstring for the default).
        seed: seeds the weight initialisation and the SFT corpus; the build is deterministic given the settings.
        size: a key of :data:`~.build.SIZES` (``"default"``, or ``"small"`` for tests).
        p_correct: probability that an SFT answer holds the correct key rather than the row's lure.
        judge_fraction: fraction of the first SFT stage's batches made of judge conversations (the second stage,
            which teaches the judge, draws its batches from the size's ``judge_phases``).
        filler_min, filler_max: filler sentences per SFT answer.
        facts_path: facts file, loaded facts dict, or ``None`` (built-in).
        progress: show a progress bar while training.
        shipped: return the package's copy when these settings are a shipped build (``False``: the cache's).
    """
    settings = build_settings(size, seed, p_correct, judge_fraction, filler_min, filler_max, resolve_facts(facts_path))
    name = build_name(settings)
    if shipped and (SHIPPED_DIR / name).is_dir():
        return SHIPPED_DIR / name
    target = cache_root(cache_dir) / name
    if not target.is_dir():
        write_build(settings, target, progress)
    return target


def write_build(settings: dict[str, Any], target: Path, progress: bool) -> Path:
    """Train the build of ``settings`` and write it (model, tokenizer, build record) to the folder ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer, losses, judge = train_base_model(settings, progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {key: value for key, value in settings.items() if key not in ("facts", "judge_template")}
        record.update(name=target.name, torch=torch.__version__, transformers=transformers.__version__,
                      final_loss=sum(losses[-20:]) / len(losses[-20:]), build_seconds=time.perf_counter() - start,
                      **judge)
        (staging / SETTINGS_FILE).write_text(json.dumps(record, indent=1) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the model is ordinary readable data
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent build that finished first: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
