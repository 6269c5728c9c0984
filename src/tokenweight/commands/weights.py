"""``tokenweight weights``: look at the token weights a scheme gives a few pairs, as the trainer computes them —
a colour heatmap on the terminal and one self-contained HTML report (OTPO: with each pair's transport plan)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tokenweight.commands.common import add_source_arguments, build_config, positive_int
from tokenweight.errors import UserError
from tokenweight.keyfact.task import keyfact_model_path

EXAMPLES = """examples:
  tokenweight weights --weighting otpo --num_pairs 4 --output otpo.html     # built-in KeyFact model and task
  tokenweight weights --weighting attention --output attention.html   # the reference judges the pairs in memory
  tokenweight weights --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \\
      --weighting tidpo --num_pairs 2 --max_length 512 --output tidpo.html
"""

#: Config keys shown in the report header for every scheme, and per scheme prefix.
_COMMON_SETTINGS = ("weighting", "beta", "loss_type", "max_length")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights", help="token-weight heatmaps of a scheme on a few pairs (terminal + HTML)", description=__doc__,
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--split", default="train", help="split to take the pairs from (default train)")
    parser.add_argument("--num_pairs", type=positive_int, default=4, help="pairs to show (default 4)")
    parser.add_argument("--output", default="weights.html", help="HTML report (default weights.html)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenweight.models import hide_shard_writing_bars
    from tokenweight.viz import html_report, terminal_heatmap

    hide_shard_writing_bars()
    if Path(args.output).exists() and not args.overwrite:
        raise UserError(f"--output {args.output} exists; pass --overwrite to replace it")
    config = build_config(args)
    if args.model_name_or_path is None and config.dataset_name is not None:
        raise UserError("--model_name_or_path is required with --dataset_name (name neither for KeyFact)")
    model_path = args.model_name_or_path or keyfact_model_path(config)
    views = weight_views(config, model_path, args.split, args.num_pairs, args.batch_size)
    settings = scheme_settings(config, model_path, args.split)
    terminal_heatmap(views, header=" · ".join(f"{k}={v}" for k, v in settings.items()))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(html_report(views, settings), encoding="utf-8")
    Console().print(f"wrote {args.output}")
    return 0


def scheme_settings(config, model_path: str, split: str) -> dict:
    """The config keys that shape the weights: the common ones and those with the scheme's prefix."""
    prefix = f"{config.weighting}_"
    settings = {"model": model_path, "dataset": config.dataset_name or "keyfact", "split": split}
    settings.update({k: getattr(config, k) for k in _COMMON_SETTINGS})
    settings["beta"] = config.effective_beta
    settings.update({k: v for k, v in vars(config).items() if k.startswith(prefix)})
    return settings


def weight_views(config, model_path: str, split: str, num_pairs: int, batch_size: int = 8) -> list:
    """:class:`~tokenweight.viz.PairView` of the first ``num_pairs`` pairs of ``split`` under ``config.weighting``,
    with the (frozen, eval-mode) model at ``model_path`` as policy — and as the model of the scheme's data
    preparation (AttentionPO's judge), run in memory; a scheme's pair coupling (OTPO's transport plan) is shown
    with each pair."""
    from tokenweight.evaluate import pair_token_weights
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import load_pairs, prepare_raw
    from tokenweight.viz import PairView, token_texts
    from tokenweight.weights import build_scheme

    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, config.model_dtype, config.attn_implementation).eval()

    def prepare(raw, name):
        return prepare_raw(config, model_path, tokenizer, raw, name, model=model)

    pairs, _ = load_pairs(config, tokenizer, split, num_pairs, prepare)
    scheme = build_scheme(config.weighting, config)
    weights, plans = pair_token_weights(scheme, model, pairs, tokenizer.pad_token_id, batch_size, plans=True)
    views = []
    for index, (row, (chosen, rejected), plan) in enumerate(zip(pairs, weights, plans)):
        views.append(PairView(index=index, prompt=tokenizer.decode(row["prompt_ids"], skip_special_tokens=True),
                              chosen_tokens=token_texts(tokenizer, row["chosen_ids"]), chosen_weights=chosen,
                              rejected_tokens=token_texts(tokenizer, row["rejected_ids"]), rejected_weights=rejected,
                              plan=plan))
    return views
