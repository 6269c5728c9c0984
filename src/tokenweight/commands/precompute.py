"""``tokenweight precompute <scheme>|reference``: one offline pass over the data, cached on disk.

``<scheme>``: the data preparation of any scheme that has one (``attention``: the frozen judge's AttentionPO
weights; ``tisdpo``: the token rewards of TIS-DPO's two contrastive models; ``sepo``: the oracle's token scores;
``tgdpo``: the guidance model's token rewards; ``cdpo``: the contrastive estimate of two models), run on the train
split exactly as ``tokenweight train`` runs it. ``reference``: the frozen reference's per-token log-probs of every
completion token (train and eval splits), so that training loads no reference model.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  tokenweight precompute attention --output runs/keyfact-attention      # built-in KeyFact model and data
  tokenweight precompute attention --model_name_or_path meta-llama/Meta-Llama-3-8B-Instruct \\
      --dataset_name princeton-nlp/llama3-ultrafeedback --dataset_split train \\
      --attention_layers -1 --attention_batch_size 8 --model_dtype bfloat16 --output weights/llama3-uf
  tokenweight precompute reference --output runs/keyfact-ref            # then: tokenweight train --ref_log_probs DIR
  accelerate launch -m tokenweight.cli precompute reference --output ref/llama3-uf \\
      --model_name_or_path meta-llama/Meta-Llama-3-8B-Instruct --dataset_name princeton-nlp/llama3-ultrafeedback \\
      --eval_split test --max_length 1024 --model_dtype bfloat16     # each process scores its own shards

The run is resumable: started again with the same settings it continues with the first missing shard. Train with
  tokenweight train --weighting attention --attention_weights DIR  (same model, dataset and settings)
  tokenweight train --ref_log_probs DIR                            (same model, tokenizer, data and lengths)
Every `tokenweight train` flag is accepted (model, dataset, lengths, attention_* settings), before or after --output.
TIS-DPO: precompute tisdpo --positive_model P --negative_model N --output DIR, then train with the same two models
and --tisdpo_weights DIR (the whole pipeline, with the training of both models: README, "TIS-DPO").
SePO: precompute sepo --oracle_model O --output DIR, then train with the same oracle and --sepo_scores DIR
(docs/SCHEMES_TOKEN_LEVEL.md). TGDPO: precompute tgdpo --tgdpo_reward_model G --output DIR, then --tgdpo_rewards DIR.
cDPO: precompute cdpo --cdpo_positive_model P --cdpo_negative_model N --output DIR, then --cdpo_scores DIR.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("precompute", help="precompute a scheme's cached data preparation (attention, "
                                   "tisdpo, sepo, tgdpo, cdpo) or reference log-probs (reference)",
                                   description=__doc__, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=precompute_choices(),
                        help="a scheme with a data preparation, or reference")
    _add_own_flags(parser)
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="any `tokenweight train` flag "
                        "(`tokenweight train --help`)")
    parser.set_defaults(func=run, print_help=parser.print_help)


def precompute_choices() -> list[str]:
    """The registered schemes with a data-preparation hook, then ``reference``."""
    from tokenweight.weights import SCHEMES

    return sorted(name for name, scheme in SCHEMES.items() if scheme.has_prepare()) + ["reference"]


def _add_own_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="cache folder (required; the scheme's train flag, e.g. "
                        "--attention_weights, or --ref_log_probs)")
    parser.add_argument("--shard_size", type=int, help="reference: pairs per shard file (default 256)")


def _own_flags(args: argparse.Namespace) -> argparse.Namespace:
    """``--output``/``--shard_size`` wherever they stand: before ``what`` argparse has them, after it they are in
    the train flags (``nargs=REMAINDER`` keeps everything after the positional)."""
    from tokenweight.errors import UserError

    parser = argparse.ArgumentParser(add_help=False)
    _add_own_flags(parser)
    late, args.flags = parser.parse_known_args(args.flags)
    args.output = args.output or late.output
    args.shard_size = args.shard_size or late.shard_size or 256
    if not args.output:
        raise UserError(f"precompute {args.what}: --output DIR is required")
    return args


def run(args: argparse.Namespace) -> int:
    from tokenweight.models import hide_shard_writing_bars

    hide_shard_writing_bars()
    if {"-h", "--help"} & set(args.flags):  # after the positional, argparse leaves --help to the train flags
        args.print_help()
        return 0
    args = _own_flags(args)
    if args.what == "reference":
        return _reference(args)
    return _scheme(args)


def _scheme(args: argparse.Namespace) -> int:
    """The train split through the scheme's prepare hook, its cache in ``--output`` (the scheme's cache setting)."""
    from tokenweight.pipeline import load_run_splits, model_path_and_tokenizer, prepare_raw
    from tokenweight.recipe import parse_train_config
    from tokenweight.weights import SCHEMES

    setting = SCHEMES[args.what].tooling.cache_setting
    cache_flags = [f"--{setting}", args.output] if setting else ["--output_dir", args.output]
    config = parse_train_config(list(args.flags) + ["--weighting", args.what, *cache_flags])
    model_path, tokenizer = model_path_and_tokenizer(config, resolve_length=False)
    train_raw = load_run_splits(config).train
    prepared = prepare_raw(config, model_path, tokenizer, train_raw, "train", config.output_dir)
    print(f"{args.what}: data preparation of {len(prepared)} pairs cached in {args.output}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    """Score the train (and eval) split with the reference, each process its shards; the main process finishes."""
    from pathlib import Path

    from accelerate import PartialState

    from tokenweight import reference_cache
    from tokenweight.config import check_scheme_objective
    from tokenweight.models import freeze, load_causal_lm
    from tokenweight.pipeline import load_run_splits, model_path_and_tokenizer, tokenize_split
    from tokenweight.recipe import parse_train_config
    from tokenweight.weights import SCHEMES

    config = parse_train_config(list(args.flags))
    check_scheme_objective(SCHEMES[config.weighting], config, given=("precompute reference",))
    state = PartialState()
    model_path, tokenizer = model_path_and_tokenizer(config)  # max_length as `train` resolves it: the cache's lengths
    raw = load_run_splits(config)
    summary = {}  # the data summary `train` prints, line for line
    splits = {"train": tokenize_split(config, tokenizer, raw.train, "train", summary, raw.train_name, raw.train_rows),
              "eval": tokenize_split(config, tokenizer, raw.eval, "eval", summary, raw.eval_name, raw.eval_rows)
              if raw.eval is not None else None}
    reference = freeze(load_causal_lm(config.ref_model_name_or_path or model_path, config.model_dtype,
                                      config.attn_implementation))
    batch_size = config.precompute_ref_batch_size or config.per_device_eval_batch_size
    for name, dataset in splits.items():
        if dataset is None:
            continue
        folder = Path(args.output, name)
        expected = reference_cache.reference_fingerprint(reference, tokenizer, dataset, config.max_length,
                                                         config.max_prompt_length)
        with state.main_process_first():  # the main process creates the manifest, the others then check it
            manifest = reference_cache.open_cache(folder, expected, len(dataset), args.shard_size,
                                                  state.is_main_process)
        if manifest["complete"]:
            print(f"reference log-probs of {name} ({len(dataset)} pairs) already cached in {folder}")
            continue
        written = reference_cache.write_missing_shards(folder, manifest, reference.to(state.device), dataset,
                                                       tokenizer.pad_token_id, batch_size, state.process_index,
                                                       state.num_processes, progress=state.is_local_main_process)
        state.wait_for_everyone()
        if state.is_main_process:
            reference_cache.finish_cache(folder, manifest)
            print(f"reference log-probs of {name}: {len(dataset)} pairs in {manifest['num_shards']} shards cached "
                  f"in {folder} ({len(written)} shards written by this process)")
        state.wait_for_everyone()
    return 0
