"""Where each scheme puts its weight on KeyFact: the share of a chosen completion's total weight on the key token.

    python benchmarks/key_weight_share.py                  # reference KeyFact model, 128 held-out pairs
    python benchmarks/key_weight_share.py --model_name_or_path outputs/keyfact-default --pairs 256

Weights are computed by each scheme exactly as in training (``evaluate.pair_token_weights``), on the held-out
KeyFact pairs, with the given model as the policy (the reference by default: the weights of the first step) —
AttentionPO's judge is that model too. Uniform's share is 1/len; a scheme that finds the deciding token scores
above it. Also reported: the key token's mean weight (1 = the weight plain DPO gives it) and its rank within the
completion (1 = the largest weight).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, markdown_table  # noqa: E402

SETTINGS = {
    "uniform": {"weighting": "uniform"},
    "otpo (reg 1, 8B configs)": {"weighting": "otpo", "otpo_reg": 1.0},
    "otpo (reg 0.1, 3B configs)": {"weighting": "otpo", "otpo_reg": 0.1},
    "tidpo (preset paper)": {"weighting": "tidpo"},
    "tidpo (preset upstream)": {"weighting": "tidpo", "tidpo_preset": "upstream"},
    "attention (last layer)": {"weighting": "attention"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="default: the KeyFact base model")
    parser.add_argument("--pairs", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from tokenweight.config import TokenweightConfig
    from tokenweight.data import tokenize_preference_dataset
    from tokenweight.evaluate import pair_token_weights
    from tokenweight.keyfact import build_keyfact, key_position, keyfact_base_model
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import prepare_raw
    from tokenweight.weights import build_scheme

    path = args.model_name_or_path or str(keyfact_base_model())
    tokenizer, model = load_tokenizer(path), load_causal_lm(path)
    raw = build_keyfact(n_train=8, n_eval=args.pairs)["eval"]
    keys = [key_position(tokenizer, row) for row in raw]
    table = []
    for name, settings in SETTINGS.items():
        config = TokenweightConfig(output_dir="/tmp/key_weight_share", use_cpu=True, report_to="none", **settings)
        prepared = prepare_raw(config, path, tokenizer, raw, "eval", model=model)  # in memory (AttentionPO: judge)
        scored, _ = tokenize_preference_dataset(prepared, tokenizer)
        weights = pair_token_weights(build_scheme(config.weighting, config), model, scored, tokenizer.pad_token_id,
                                     progress=False)
        shares, key_weights, ranks = [], [], []
        for (chosen, _), key in zip(weights, keys):
            chosen = torch.tensor(chosen, dtype=torch.float64)
            shares.append((chosen[key] / chosen.sum()).item())
            key_weights.append((chosen[key] / chosen.mean()).item())
            ranks.append(1 + int((chosen > chosen[key]).sum()))
        table.append([name, f"{statistics.mean(shares):.4f}", f"{statistics.mean(key_weights):.3f}",
                      f"{statistics.median(ranks):.0f}"])
    print(f"`{command_line()}`\n\nmodel {path}, {len(keys)} held-out KeyFact pairs\n")
    print(markdown_table(["scheme", "key weight share", "key weight / mean weight", "median key rank"], table))


if __name__ == "__main__":
    main()
