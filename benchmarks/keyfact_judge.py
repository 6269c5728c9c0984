"""Can the KeyFact base model judge? Its verdict accuracy on AttentionPO's judge inputs vs its own key accuracy.

    python benchmarks/keyfact_judge.py                  # the default base model (built on first use, then cached)
    python benchmarks/keyfact_judge.py --size small     # the tests' model

The base model's SFT answers hold the correct key only half the time (``p_correct`` 0.5) while its judge
conversations always name the answer with the correct key. AttentionPO's premise is a judge that recognises the
better answer although it cannot produce it: this script measures both sides on the fixed held-out splits —
the judge's verdict accuracy (``judge_verdict_accuracy``: both answer orders of every pair, the judge input built
by AttentionPO's code), split by the rejected key (the row's lure, i.e. the word the model's own answers hesitate
over, vs another distractor), and, on the answer side, forced-choice key accuracy (the correct key above every
distractor at the key slot of the clean answer), greedy ``key_acc`` and ``key_margin``. Also printed: parameters and the build's wall time on this
machine (from the cached ``keyfact_build.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, markdown_table  # noqa: E402

from tokenweight.keyfact import (build_keyfact, evaluate_keyfact, key_margins, keyfact_base_model,  # noqa: E402
                                 one_thread)
from tokenweight.keyfact.facts import find_row, load_facts  # noqa: E402
from tokenweight.keyfact.judge import judge_verdict_accuracy  # noqa: E402
from tokenweight.keyfact.sft import phase_steps  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--eval_size", type=int, default=512)
    parser.add_argument("--min_judge_accuracy", type=float, default=None,
                        help="exit 1 unless the eval-split verdict accuracy reaches this")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = keyfact_base_model(size=args.size)
    build = json.loads((path / "keyfact_build.json").read_text())
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    facts = load_facts()
    data = build_keyfact(n_train=args.eval_size, n_eval=args.eval_size, n_validation=128)
    rows, results = [], {}
    with one_thread():
        for split in ("eval", "validation", "train"):
            pairs = list(data[split])
            lure = [r for r in pairs if r["wrong_key"] == find_row(facts, r["family"], r["subject"])["distractors"][0]]
            other = [r for r in pairs if r not in lure]
            results[split] = {"judge": judge_verdict_accuracy(model, tokenizer, pairs),
                              "judge_lure": judge_verdict_accuracy(model, tokenizer, lure),
                              "judge_other": judge_verdict_accuracy(model, tokenizer, other)}
            if split == "eval":
                results[split].update(evaluate_keyfact(model, tokenizer, pairs))
                results[split]["forced_choice"] = (key_margins(model, tokenizer, pairs) > 0).float().mean().item()
            rows.append([split, str(len(pairs)), f"{results[split]['judge']:.3f}",
                         f"{results[split]['judge_lure']:.3f} ({len(lure)})",
                         f"{results[split]['judge_other']:.3f} ({len(other)})"])
    params = sum(p.numel() for p in model.parameters())
    rounds = build.get("judge_round_accuracies_train", [])
    print(f"`{command_line()}`\n")
    print(f"base model `{path.name}`: {params:,} parameters, built in {build['build_seconds']:.0f} s "
          f"({build['steps']} SFT steps with judge_fraction {build['judge_fraction']}, then "
          f"{phase_steps(build['judge_phases'])} judge-stage steps {build['judge_phases']} per round, "
          f"{len(rounds)} round(s): training-pair verdict accuracy {', '.join(f'{a:.3f}' for a in rounds)}); this "
          f"script {time.perf_counter() - start:.0f} s\n")
    print(markdown_table(["split", "pairs", "judge verdict acc", "vs lure (pairs)", "vs other distractor (pairs)"],
                         rows))
    ev = results["eval"]
    print(f"\nanswers (eval): forced-choice key accuracy {ev['forced_choice']:.3f}, greedy key_acc "
          f"{ev['key_acc']:.3f}, key_margin {ev['key_margin']:.3f}, format rate {ev['key_format_rate']:.3f}")
    if args.min_judge_accuracy is not None and ev["judge"] < args.min_judge_accuracy:
        sys.exit(f"judge verdict accuracy {ev['judge']:.3f} < {args.min_judge_accuracy}")
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
