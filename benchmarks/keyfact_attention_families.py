"""Does AttentionPO's judge find the key, family by family? On each shipped base model of both built-in facts files.

    python benchmarks/keyfact_attention_families.py                       # both facts files, every shipped replica
    python benchmarks/keyfact_attention_families.py --size small --eval_size 32

AttentionPO's weights come from the frozen base model judging the pair (its last-token attention), computed once
before training, so they can be measured without training. Per facts file, base model and family, on the fixed
evaluation pairs (``eval`` split, eval seed 0): the judge's verdict accuracy (both answer orders; 0.5 is chance),
and the scheme's chosen-side ``key_weight_rel`` (the key's weight over the mean weight; uniform 1) and ``key_share``
(the key's share of the weight from the key onward) with the default judge layers and with each single layer, to
tell where the judge's attention lands when it does not land on the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, markdown_table  # noqa: E402

from tokenweight.keyfact.bench import BenchSettings  # noqa: E402
from tokenweight.keyfact.bench.rows import bench_row  # noqa: E402
from tokenweight.keyfact.bench.runs import evaluation_rows  # noqa: E402
from tokenweight.keyfact.bench.settings import run_config  # noqa: E402
from tokenweight.keyfact import key_slots, key_weight_stats, keyfact_base_model, one_thread  # noqa: E402
from tokenweight.keyfact.facts import DEFAULT_FACTS_PATH  # noqa: E402
from tokenweight.keyfact.judge import judge_verdict_accuracy  # noqa: E402
from tokenweight.keyfact.shipped import EVERYDAY_FACTS_PATH, replica_seeds  # noqa: E402


def key_weights_by_family(settings: BenchSettings, base_path: str, rows, layers: list[int] | None) -> dict:
    """``{family: (key_weight_rel, key_share)}`` of AttentionPO's chosen-side weights (judge ``layers``); the judge's
    cache goes to a temporary folder."""
    import tempfile
    from dataclasses import replace

    from tokenweight.evaluate import pair_token_weights
    from tokenweight.models import load_causal_lm, load_tokenizer
    from tokenweight.pipeline import prepare_split
    from tokenweight.weights import build_scheme

    tokenizer = load_tokenizer(base_path)
    with tempfile.TemporaryDirectory() as folder:
        config = replace(run_config(settings, bench_row("attention"), "base", 0, Path(folder), settings.learning_rate),
                         attention_layers=layers)
        pairs = prepare_split(config, base_path, tokenizer, rows, "eval")
    model = load_causal_lm(base_path).eval()
    weights = pair_token_weights(build_scheme(config.weighting, config), model, pairs, tokenizer.pad_token_id, 64,
                                 progress=False)
    keys = [index for index, _ in key_slots(tokenizer, rows, settings.facts)]
    share, relative = key_weight_stats([chosen for chosen, _ in weights], keys)
    families = np.array(rows["family"])
    return {f: (float(np.mean(np.array(relative)[families == f])), float(np.mean(np.array(share)[families == f])))
            for f in dict.fromkeys(rows["family"])}


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--eval_size", type=int, default=512)
    args = parser.parse_args(argv)
    from tokenweight.models import load_causal_lm, load_tokenizer

    table = []
    with one_thread():
        for facts in (DEFAULT_FACTS_PATH, EVERYDAY_FACTS_PATH):
            settings = BenchSettings(rows=["uniform"], seeds=[0], facts=str(facts), eval_size=args.eval_size,
                                     model_size=args.size)
            rows = evaluation_rows(settings, "eval", args.eval_size)
            for seed in replica_seeds(args.size, facts):
                path = str(keyfact_base_model(seed=seed, size=args.size, facts_path=facts))
                model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
                layers = model.config.num_hidden_layers
                by_layers = {"default layers": key_weights_by_family(settings, path, rows, None),
                             **{f"layer {k} only": key_weights_by_family(settings, path, rows, [k])
                                for k in range(layers)}}
                for family in dict.fromkeys(rows["family"]):
                    members = rows.filter(lambda r: r["family"] == family)
                    judge = judge_verdict_accuracy(model, tokenizer, members)
                    cells = [f"{by_layers[name][family][0]:.2f} / {by_layers[name][family][1]:.3f}"
                             for name in by_layers]
                    table.append([facts.name, str(seed), family, str(len(members)), f"{judge:.3f}", *cells])
    print(f"`{command_line()}`\n")
    print(markdown_table(["facts", "base seed", "family", "pairs", "judge verdict acc",
                          *[f"key_weight_rel / key_share ({name})" for name in by_layers]], table))
    return table


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
