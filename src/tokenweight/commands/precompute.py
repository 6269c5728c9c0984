"""``tokenweight precompute attention``: run the frozen judge over a dataset once and cache AttentionPO weights."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  tokenweight precompute attention --output runs/keyfact-attention      # built-in KeyFact model and data
  tokenweight precompute attention --model_name_or_path meta-llama/Meta-Llama-3-8B-Instruct \\
      --dataset_name princeton-nlp/llama3-ultrafeedback --dataset_split train \\
      --attention_layers -1 --attention_batch_size 8 --model_dtype bfloat16 --output weights/llama3-uf

The run is resumable: started again with the same settings it continues with the first missing shard. Train with
  tokenweight train --weighting attention --attention_weights DIR  (same model, dataset and settings)
Every `tokenweight train` flag is accepted (model, dataset, lengths, attention_* settings).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("precompute", help="precompute cached token weights (attention)",
                                   description=__doc__, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["attention"], help="which weights to precompute")
    parser.add_argument("--output", required=True, help="cache folder (the train flag --attention_weights)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="any `tokenweight train` flag")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenweight.cli import parse_train_config
    from tokenweight.models import load_tokenizer
    from tokenweight.run import load_raw_splits, resolve_model_path, tokenize_with_attention_weights

    config = parse_train_config(list(args.flags) + ["--weighting", "attention", "--attention_weights", args.output])
    model_path = resolve_model_path(config)
    tokenizer = load_tokenizer(model_path)
    train_raw, _ = load_raw_splits(config)
    weighted = tokenize_with_attention_weights(config, model_path, tokenizer, train_raw)
    print(f"attention weights for {len(weighted)} pairs cached in {args.output}")
    return 0
