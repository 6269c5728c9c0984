"""What decides the KeyFact base model's weights: its sizes and settings, and the SFT build itself.

Everything in this module, :mod:`.sft`, :mod:`.tokenizer` and :mod:`.facts` (:data:`BUILD_MODULES`) enters
:func:`build_code_digest`; with the settings (:func:`build_settings`) it names a build
(``keyfact-<size>-<settings digest>``). Loading, caching and shipping the built models live in :mod:`.base_model`
and :mod:`.shipped`, outside the digest, so editing them renames no model. Neither the torch nor the transformers
version enters the name: a shipped model is the same file on every machine (the versions that built it are in its
build record). Two parts of the judge stage's round check are outside the digest: the check pairs
(:func:`~.generator.build_keyfact`) and the verdict accuracy (:func:`~.judge.judge_verdict_accuracy`); they decide
only whether another judge round runs, and the record lists each round's accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ..weights.attention.judge import default_template
from .sft import phase_steps, sft_batches, sft_filler, train_sft
from .tokenizer import CHAT_TEMPLATE, build_keyfact_tokenizer

#: The source files whose text enters the build digest (everything that decides the trained weights).
BUILD_MODULES = ("build.py", "sft.py", "tokenizer.py", "facts.py")

# Model shape and the two SFT stages per size. "default" is what `tokenweight train` uses; "small" builds in seconds
# (tests). Stage 1 (`steps`, `lr`, `warmup`): the answers, plus `judge_fraction` judge batches. 1200 default steps: at
# 800 the build could leave the reference copying the wrong subject on held-out animal-sound paraphrases (format rate
# 0.92 on the eval split); at 1200 and 2000 it was >= 0.996. Stage 2 (`judge_phases`: (batches, mix) in turn, one
# schedule of `judge_lr` with `judge_warmup` over all of them): the judge, learned from verification conversations
# (which key is right for each subject) and judge conversations, while answer batches keep the answers at p_correct.
# The judge leaves chance late and not on every corpus stream or CPU (floating-point kernels differ; docs/KEYFACT.md,
# "The judge", has the measured runs), so stage 2 runs in rounds: after each, the verdict accuracy on
# JUDGE_CHECK_PAIRS training pairs is measured, and below `judge_min_accuracy` another round of the same phases
# (fresh schedule, next corpus stream) follows, up to `judge_max_rounds`. The small model has no judge stage (20
# steps of it broke its answers); the stage is tested on it with other phases.
JUDGE_MIX = {"answer": 0.2, "verify": 0.5, "judge": 0.3}
SIZES: dict[str, dict[str, Any]] = {
    "default": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 256, "steps": 1200, "batch_size": 32, "lr": 3e-3, "warmup": 50,
                "judge_phases": [[2500, JUDGE_MIX]], "judge_lr": 3e-3, "judge_warmup": 100,
                "judge_min_accuracy": 0.8, "judge_max_rounds": 3},
    "small": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "steps": 100, "batch_size": 16, "lr": 1e-2, "warmup": 10,
              "judge_phases": [], "judge_lr": 1e-2, "judge_warmup": 5,  # no judge stage: the tests' answer model
              "judge_min_accuracy": 0.8, "judge_max_rounds": 1},
}
MAX_POSITIONS = 512
JUDGE_CHECK_PAIRS = 128


@contextlib.contextmanager
def one_thread():
    """Run torch CPU ops on one thread inside the block (restored after).

    A KeyFact-sized model has nothing to gain from intra-op threads, and on a busy machine they are ruinous: on 2
    shared cores one SFT step took 0.89 s with 2 threads and 0.035 s with 1, greedy evaluation 17.8 s vs 0.1 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_settings(size: str, seed: int, p_correct: float, judge_fraction: float, filler_min: int, filler_max: int,
                   facts: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a build (the facts and templates included), checked; ``ValueError`` names a bad one."""
    if size not in SIZES:
        raise ValueError(f"unknown KeyFact model size {size!r}; known: {sorted(SIZES)}")
    if not 0.0 <= p_correct <= 1.0 or not 0.0 <= judge_fraction <= 1.0:
        raise ValueError(f"p_correct and judge_fraction must be in [0, 1], got {p_correct}, {judge_fraction}")
    pool = len(sft_filler(facts))
    if not 0 <= filler_min <= filler_max <= pool:
        raise ValueError(f"need 0 <= filler_min <= filler_max <= {pool} (filler sentences in the facts), got "
                         f"filler_min={filler_min}, filler_max={filler_max}")
    return {"build_code": build_code_digest(), "size": size, **SIZES[size], "seed": seed, "p_correct": p_correct,
            "judge_fraction": judge_fraction, "filler_min": filler_min, "filler_max": filler_max,
            "max_position_embeddings": MAX_POSITIONS, "facts": facts, "judge_template": default_template(),
            "chat_template": CHAT_TEMPLATE}


def build_code_digest() -> str:
    """SHA-256 (16 hex digits) of the source of :data:`BUILD_MODULES`."""
    sources = hashlib.sha256()
    for name in BUILD_MODULES:
        sources.update(name.encode() + b"\0" + Path(__file__).with_name(name).read_bytes() + b"\0")
    return sources.hexdigest()[:16]


def build_name(settings: dict[str, Any]) -> str:
    """``keyfact-<size>-<16 hex digits of the settings' SHA-256>``: the build's folder name."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"keyfact-{settings['size']}-{digest}"


def train_base_model(settings: dict[str, Any], progress: bool):
    """Build the tokenizer and train the model of ``settings``; returns ``(model, tokenizer, losses, judge record)``
    (the record is empty without a judge stage)."""
    facts = settings["facts"]
    tokenizer = build_keyfact_tokenizer(facts, model_max_length=MAX_POSITIONS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=settings["hidden_size"],
                         num_hidden_layers=settings["num_hidden_layers"],
                         num_attention_heads=settings["num_attention_heads"],
                         num_key_value_heads=settings["num_key_value_heads"],
                         intermediate_size=settings["intermediate_size"], max_position_embeddings=MAX_POSITIONS,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        model = AutoModelForCausalLM.from_config(config)
        first_stage = [(settings["steps"], {"judge": settings["judge_fraction"],
                                            "answer": 1.0 - settings["judge_fraction"]})]
        answers = sft_batches(tokenizer, facts, first_stage, settings["batch_size"], f"keyfact-sft-{settings['seed']}",
                              settings["p_correct"], settings["filler_min"], settings["filler_max"])
        losses = train_sft(model, answers, settings["steps"], settings["lr"], settings["warmup"], progress)
        judge = _train_judge(model, tokenizer, settings, facts, losses, progress) if settings["judge_phases"] else {}
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer, losses, judge


def _train_judge(model, tokenizer, settings: dict[str, Any], facts: dict[str, Any], losses: list[float],
                 progress: bool) -> dict[str, Any]:
    """Stage 2 in rounds (see :data:`SIZES`), appending to ``losses``; each round's verdict accuracy on KeyFact
    training pairs (the held-out splits stay unseen) is printed. Returns the judge part of the build record."""
    from .generator import build_keyfact
    from .judge import judge_verdict_accuracy

    pairs = build_keyfact(facts_path=facts, n_train=JUDGE_CHECK_PAIRS, n_eval=1, n_validation=1,
                          seed=settings["seed"])["train"]
    rounds, accuracies = settings["judge_max_rounds"], []
    while len(accuracies) < rounds and (not accuracies or accuracies[-1] < settings["judge_min_accuracy"]):
        number = len(accuracies) + 1
        stream = f"keyfact-sft-judge-{settings['seed']}" + (f"-round{number}" if number > 1 else "")
        batches = sft_batches(tokenizer, facts, settings["judge_phases"], settings["batch_size"], stream,
                              settings["p_correct"], settings["filler_min"], settings["filler_max"])
        losses += train_sft(model, batches, phase_steps(settings["judge_phases"]), settings["judge_lr"],
                            settings["judge_warmup"], progress,
                            desc=f"KeyFact base model (SFT, judge stage, round {number}/{rounds})")
        accuracies.append(judge_verdict_accuracy(model, tokenizer, pairs))
        passed = accuracies[-1] >= settings["judge_min_accuracy"]
        verdict = ("above chance" if accuracies[-1] >= 0.6 else
                   "AT CHANCE: AttentionPO's premise does not hold for this model")
        next_step = ("" if passed else "; another round follows" if number < rounds else
                     f"; below judge_min_accuracy {settings['judge_min_accuracy']:g} after the last round")
        print(f"KeyFact base model: judge verdict accuracy {accuracies[-1]:.3f} on {JUDGE_CHECK_PAIRS} training pairs "
              f"after round {number}/{rounds} ({verdict}; 0.5 is chance{next_step})", file=sys.stderr)
    return {"judge_verdict_accuracy_train": accuracies[-1], "judge_round_accuracies_train": accuracies}
