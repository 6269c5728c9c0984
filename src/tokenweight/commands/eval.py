"""``tokenweight eval``: held-out preference accuracy (unweighted and under a scheme), generation statistics,
reward-model win rate and AlpacaEval / Arena-Hard exports of the generations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
from rich.console import Console
from rich.table import Table

from tokenweight.commands.common import add_source_arguments, build_config, model_label
from tokenweight.config import check_local_path
from tokenweight.errors import UserError
from tokenweight.keyfact.task import keyfact_metrics, keyfact_model_path

EXAMPLES = """examples:
  tokenweight eval --model_name_or_path outputs/keyfact-default
      # built-in KeyFact held-out split, reference = the KeyFact base model; adds key_acc, key_margin, gen_len;
      # writes outputs/keyfact-default/eval.json (refuses to replace it without --overwrite)
  tokenweight eval --model_name_or_path runs/otpo --weighting otpo --output eval-otpo.json
  tokenweight eval --model_name_or_path runs/file-dpo --dataset_name pairs.jsonl --eval_fraction 0.1 --split_seed 0
      # the rows `tokenweight train --dataset_name pairs.jsonl --eval_fraction 0.1 --seed 0` held out
  tokenweight eval --model_name_or_path runs/dpo --ref_model_name_or_path meta-llama/Llama-3.2-1B-Instruct \\
      --dataset_name trl-lib/ultrafeedback_binarized --eval_split test --num_pairs 500 \\
      --reward_model ./my-reward-model --num_generations 200 --export_dir exports --output eval.json
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="held-out preference accuracy, generation stats, reward-model win rate, exports",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser, model_required=True)
    parser.add_argument("--ref_model_name_or_path", help="reference of the implicit reward (default: the KeyFact "
                                                         "base model for KeyFact; none otherwise)")
    parser.add_argument("--eval_split", help="held-out split (default: 'test'; KeyFact: 'eval'; a single file: "
                                             "its one split 'train')")
    parser.add_argument("--eval_fraction", type=float,
                        help="evaluate the fraction of the training split that `tokenweight train --eval_fraction F "
                             "--seed N` held out (with --split_seed N)")
    parser.add_argument("--split_seed", type=int, default=0, help="the training run's --seed for --eval_fraction")
    parser.add_argument("--num_pairs", type=int, help="evaluate at most this many pairs (default: all)")
    parser.add_argument("--num_generations", type=int, default=64,
                        help="held-out prompts to generate for (default 64; 0: no generation)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--reward_model", help="local AutoModelForSequenceClassification folder: win rate of the "
                                               "policy's generations against the reference's (or the dataset's "
                                               "chosen answers when there is no reference)")
    parser.add_argument("--export_dir", help="write alpaca_eval.json and arena_hard.jsonl of the generations here")
    parser.add_argument("--output", help="JSON file of the results (default: eval.json in the model's folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenweight.models import hide_shard_writing_bars

    hide_shard_writing_bars()
    output = output_path(args)
    results = evaluate_model(args)
    print_report(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    Console().print(f"wrote {output}")
    return 0


def output_path(args: argparse.Namespace) -> Path:
    """``--output``, or ``eval.json`` in the evaluated model's folder; an existing file needs ``--overwrite``
    (checked before any model is loaded)."""
    check_local_path("model_name_or_path", args.model_name_or_path)
    if args.output:
        output = Path(args.output)
    elif Path(args.model_name_or_path).is_dir():
        output = Path(args.model_name_or_path, "eval.json")
    else:
        raise UserError(f"--model_name_or_path {args.model_name_or_path} is not a local folder: name the results "
                        "file with --output PATH")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it, or --output another path")
    return output


def held_out_rows(args: argparse.Namespace, config, tokenizer, prepare=None,
                  ) -> tuple[str, datasets.Dataset, datasets.Dataset]:
    """``(split name, tokenized pairs, raw rows)`` of the evaluated split, the name saying where it comes from:
    ``test (file x.jsonl, 12 rows)``, ``train[eval_fraction 0.1, seed 0] (file x.jsonl, 3 rows)``, …;
    ``prepare(raw, split)`` (the scheme's data preparation) runs on the raw rows before tokenization."""
    from tokenweight.data import print_data_summary, tokenize_preference_dataset
    from tokenweight.pipeline import load_pairs
    from tokenweight.sources import describe_source, load_splits
    from tokenweight.weights.base import scheme_class

    if args.eval_fraction:
        if config.dataset_name is None:
            raise UserError("--eval_fraction needs --dataset_name: the built-in KeyFact task has its own eval split")
        splits = load_splits(config.dataset_name, args.eval_split or "train", None, args.eval_fraction,
                             args.split_seed)
        raw = splits.eval if args.num_pairs is None else splits.eval.select(range(min(args.num_pairs,
                                                                                        len(splits.eval))))
        if prepare is not None:
            raw = prepare(raw, "eval")
        pairs, stats = tokenize_preference_dataset(raw, tokenizer, max_length=config.max_length,
                                                   max_prompt_length=config.max_prompt_length,
                                                   name=splits.eval_name, source_rows=splits.eval_rows,
                                                   signed_weights=scheme_class(config.weighting).signed_weights)
        print_data_summary(stats, splits.eval_name)
        return splits.eval_name, pairs, raw
    if config.dataset_name is None:
        split, where = args.eval_split or "eval", "built-in KeyFact"
    else:
        source_is_file = Path(config.dataset_name).expanduser().is_file()
        split = args.eval_split or ("train" if source_is_file else "test")
        where = describe_source(config.dataset_name)
    pairs, raw = load_pairs(config, tokenizer, split, args.num_pairs, prepare)
    return f"{split} ({where}, {len(raw)} rows)", pairs, raw


def evaluate_model(args: argparse.Namespace) -> dict:
    """Every metric of ``tokenweight eval`` as a nested dict (see the module docstring)."""
    from tokenweight import evaluate as ev
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import prepare_raw
    from tokenweight.weights import SCHEMES

    config = build_config(args)
    keyfact = config.dataset_name is None
    ref_path = args.ref_model_name_or_path or (keyfact_model_path(config) if keyfact else None)
    if args.weighting is not None and ref_path is None and SCHEMES[config.weighting].uses_reference:
        raise UserError(f"--weighting needs a reference model (--ref_model_name_or_path) for the implicit reward "
                        f"of {args.weighting}")
    tokenizer = load_tokenizer(args.model_name_or_path)
    policy = load_causal_lm(args.model_name_or_path, config.model_dtype, config.attn_implementation)
    ref = load_causal_lm(ref_path, config.model_dtype, config.attn_implementation) if ref_path else None
    prepare = None
    if args.weighting is not None:  # the scheme's data preparation, in memory, with the reference as its model
        def prepare(raw, split):
            return prepare_raw(config, ref_path, tokenizer, raw, split, model=ref)
    split, pairs, raw = held_out_rows(args, config, tokenizer, prepare)
    beta = config.effective_beta
    results = {"model": args.model_name_or_path, "reference": ref_path, "dataset": config.dataset_name or "keyfact",
               "split": split, "pairs": len(pairs), "beta": beta}

    scores = ev.score_pairs(policy, ref, pairs, tokenizer.pad_token_id, batch_size=args.batch_size)
    preference = ev.preference_report(scores, beta)
    if ref is None:  # without a reference the implicit reward is 0: only the likelihood ranking means something
        preference = {"logp_acc": preference["logp_acc"]}
    results["preference"] = preference
    if args.weighting is not None:
        results["weighted"] = {"weighting": args.weighting, **weighted_metrics(config, policy, ref, tokenizer, pairs,
                                                                              args.batch_size)}

    if args.num_generations > 0:
        results.update(generation_metrics(args, policy, ref, tokenizer, pairs))
    if keyfact:
        results["keyfact"] = keyfact_metrics(config, policy, tokenizer, list(raw), max_new_tokens=args.max_new_tokens)
    return results


def weighted_metrics(config, policy, ref, tokenizer, pairs, batch_size: int) -> dict:
    """``weighted_pref_acc`` / ``weighted_margin`` under ``config.weighting`` on ``pairs`` prepared by the scheme,
    and the ``reward`` they rank by (a reference-free scheme: its own, β·Σ ω log π_θ; ``ref`` is not used)."""
    from tokenweight import evaluate as ev
    from tokenweight.weights import build_scheme

    scheme = build_scheme(config.weighting, config)
    scores = ev.score_weighted_pairs(policy, ref, scheme, pairs, tokenizer.pad_token_id,
                                     batch_size=batch_size)
    return {"reward": ev.REWARD_DEFINITIONS[scheme.uses_reference],
            **ev.weighted_preference_report(scores, config.effective_beta)}


def generation_metrics(args, policy, ref, tokenizer, pairs) -> dict:
    """Generation statistics of the first ``--num_generations`` held-out prompts, the reward-model win rate and
    the exports."""
    from tokenweight import evaluate as ev

    rows = pairs.select(range(min(args.num_generations, len(pairs))))
    prompts = rows["prompt"]
    settings = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample, "temperature": args.temperature,
                "top_p": args.top_p, "batch_size": args.batch_size, "seed": args.seed}
    completions = ev.generate_completions(policy, rows["prompt_ids"], **settings)
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
    out = {"generation": {"decoding": "sample" if args.do_sample else "greedy", "prompts": len(rows),
                          **ev.generation_stats(completions, args.max_new_tokens)}}
    if args.reward_model:
        out["win_rate"] = reward_win_rate(args, ref, tokenizer, rows, texts, settings)
    if args.export_dir:
        label = model_label(args.model_name_or_path)
        instructions = [ev.instruction_text(p) for p in prompts]
        question_ids = [str(q) for q in (rows["question_id"] if "question_id" in rows.column_names
                                          else rows["row_index"])]
        out["exports"] = {
            "alpaca_eval": str(ev.export_alpacaeval(Path(args.export_dir, "alpaca_eval.json"), instructions, texts,
                                                    label)),
            "arena_hard": str(ev.export_arena_hard(Path(args.export_dir, "arena_hard.jsonl"), question_ids, texts,
                                                   label))}
    return out


def reward_win_rate(args, ref, tokenizer, rows, texts, settings) -> dict:
    """Win rate of ``texts`` against the reference's generations (same decoding) or the dataset's chosen answers."""
    from transformers import AutoModelForSequenceClassification

    from tokenweight import evaluate as ev
    from tokenweight.models import load_tokenizer

    if ref is not None:
        baseline = [tokenizer.decode(c, skip_special_tokens=True).strip()
                    for c in ev.generate_completions(ref, rows["prompt_ids"], **settings)]
        against = "reference generations"
    else:
        baseline = [answer_text(c) for c in rows["chosen"]]
        against = "dataset chosen answers"
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model)
    reward_tokenizer = load_tokenizer(args.reward_model)
    policy_scores = ev.reward_scores(reward_model, reward_tokenizer, rows["prompt"], texts, args.batch_size)
    baseline_scores = ev.reward_scores(reward_model, reward_tokenizer, rows["prompt"], baseline, args.batch_size)
    return {"against": against, "reward_model": args.reward_model,
            "win_rate": ev.win_rate(policy_scores, baseline_scores),
            "reward_policy": policy_scores.mean().item(), "reward_baseline": baseline_scores.mean().item()}


def answer_text(completion: str | list[dict]) -> str:
    """The text of a dataset completion (a string, or the content of its messages)."""
    return completion.strip() if isinstance(completion, str) else " ".join(m["content"] for m in completion).strip()


def print_report(results: dict) -> None:
    """One rich table: section, metric, value."""
    table = Table(title=f"tokenweight eval: {results['model']} ({results['pairs']} pairs)")
    for column, justify in (("section", "left"), ("metric", "left"), ("value", "right")):
        table.add_column(column, justify=justify)
    for section in ("preference", "weighted", "generation", "keyfact", "win_rate"):
        for name, value in results.get(section, {}).items():
            table.add_row(section, name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)
    Console().print(f"eval split: {results['split']}", soft_wrap=True, markup=False, highlight=False)
