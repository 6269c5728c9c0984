"""Do the shortcut sentence and the key compete for plain DPO's margin? Where each pair's margin comes from.

    python benchmarks/keyfact_shortcut.py                       # base, shortcut, shortcut-rejected; seed 0
    python benchmarks/keyfact_shortcut.py --variants shortcut --seed 1

Trains ``uniform`` (plain DPO) on each KeyFact bench variant with the bench's budget and seed, then on the run's
own training pairs splits every pair's implicit-reward margin ``Δ = Σ_t log π/π_ref (chosen) − Σ_t log π/π_ref
(rejected)`` into the key token's part (chosen key slot minus rejected key slot), the shortcut sentence's part (its
tokens on whichever side holds it, signed as they enter Δ) and the rest (filler and template), and reports the mean
per-pair gradient scale ``σ(−βΔ)`` (1/2 untrained; near 0 where the sigmoid saturates), over the pairs with the
sentence on the chosen side, on the rejected side, and without it. A shortcut competes with the key when its part
of Δ is large and the gradient scale of the pairs that carry it falls.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import PrinterCallback

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, markdown_table  # noqa: E402

from tokenweight.keyfact.bench.rows import bench_row  # noqa: E402
from tokenweight.keyfact.bench.settings import BenchSettings, run_config  # noqa: E402
from tokenweight.keyfact import key_slots, key_word, keyfact_base_model, one_thread  # noqa: E402
from tokenweight.keyfact.facts import load_facts  # noqa: E402
from tokenweight.logps import naive_token_logps  # noqa: E402
from tokenweight.models import load_causal_lm, load_tokenizer  # noqa: E402
from tokenweight.pipeline import load_run_splits, prepare_split  # noqa: E402
from tokenweight.trainer import TokenweightTrainer  # noqa: E402


@torch.no_grad()
def completion_logratios(policy, reference, prompts: list[list[int]], completions: list[list[int]],
                         pad_id: int, batch_size: int = 128) -> list[torch.Tensor]:
    """Per sequence, ``[len(completion)]`` log π/π_ref of each completion token given the prompt and the tokens
    before it."""
    out = []
    for begin in range(0, len(prompts), batch_size):
        sequences = [p + c for p, c in zip(prompts[begin:begin + batch_size], completions[begin:begin + batch_size])]
        width = max(len(s) for s in sequences)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        ratio = (naive_token_logps(policy(input_ids=ids, attention_mask=mask).logits, ids)
                 - naive_token_logps(reference(input_ids=ids, attention_mask=mask).logits, ids))  # [b, width-1]
        for b, (prompt, completion) in enumerate(zip(prompts[begin:begin + batch_size],
                                                     completions[begin:begin + batch_size])):
            out.append(ratio[b, len(prompt) - 1:len(prompt) - 1 + len(completion)])
    return out


def sentence_span(completion: list[int], sentence: list[int]) -> range:
    """Positions of ``sentence``'s token ids in ``completion`` (empty when it does not occur)."""
    for start in range(len(completion) - len(sentence) + 1):
        if completion[start:start + len(sentence)] == sentence:
            return range(start, start + len(sentence))
    return range(0)


def side_parts(row: dict, ids: list[int], ratio: torch.Tensor, key_slot: tuple[int, int], side: str,
               sentence: list[int], tokenizer) -> tuple[float, float, float]:
    """``(total, key, shortcut)`` of one side's ``[len(ids)]`` log-ratios: all of them, the key slot's, and the
    shortcut sentence's tokens' (0 when the side holds none). Raises if the key slot does not hold the side's key
    token, or the sentence is missing where the row says it is, or overlaps the key."""
    index, length = key_slot
    word = key_word(row, side)
    if length != len(ids) or [ids[index]] != tokenizer(" " + word, add_special_tokens=False)["input_ids"]:
        raise ValueError(f"row {row['question']!r}: the {side} key slot {index} does not hold {word!r}")
    span = sentence_span(ids, sentence)
    if bool(span) != (row["shortcut"] == side) or index in span:
        raise ValueError(f"row {row['question']!r}: the shortcut sentence is not where the row says ({side})")
    return ratio.sum().item(), ratio[index].item(), ratio[list(span)].sum().item() if span else 0.0


def margin_parts(variant: str, seed: int, settings: BenchSettings, base_path: str) -> dict[str, dict[str, float]]:
    """Train uniform on ``variant`` with ``seed``; per group of training pairs (``chosen``/``rejected``: the side
    holding the shortcut sentence, ``none``), the means of Δ, its key/shortcut/rest parts and σ(−βΔ)."""
    tokenizer = load_tokenizer(base_path)
    facts = load_facts()
    sentence = tokenizer(" " + facts["shortcut"], add_special_tokens=False)["input_ids"]
    with tempfile.TemporaryDirectory() as output_dir:
        config = run_config(settings, bench_row("uniform"), variant, seed, Path(output_dir), settings.learning_rate)
        rows = load_run_splits(config).train
        pairs = prepare_split(config, base_path, tokenizer, rows, "train")
        policy, reference = load_causal_lm(base_path), load_causal_lm(base_path)
        trainer = TokenweightTrainer(model=policy, ref_model=reference, args=config, train_dataset=pairs,
                                     processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the table is the output
        trainer.train()
    if list(pairs["row_index"]) != list(range(len(rows))):
        raise ValueError("tokenization dropped or reordered training rows; raise --max_length")
    policy.eval()
    reference.eval()
    prompts = list(pairs["prompt_ids"])
    ratios = {side: completion_logratios(policy, reference, prompts, list(pairs[f"{side}_ids"]),
                                         tokenizer.pad_token_id) for side in ("chosen", "rejected")}
    slots = {side: key_slots(tokenizer, rows, facts, side) for side in ("chosen", "rejected")}
    groups: dict[str, list[dict[str, float]]] = {"chosen": [], "rejected": [], "none": []}
    for k, row in enumerate(rows):
        (c_total, c_key, c_short), (r_total, r_key, r_short) = (
            side_parts(row, list(pairs[k][f"{side}_ids"]), ratios[side][k], slots[side][k], side, sentence, tokenizer)
            for side in ("chosen", "rejected"))
        margin, key, shortcut = c_total - r_total, c_key - r_key, c_short - r_short
        scale = torch.sigmoid(torch.tensor(-config.effective_beta * margin)).item()
        groups[row["shortcut"]].append({"margin": margin, "key": key, "shortcut": shortcut,
                                        "rest": margin - key - shortcut, "grad_scale": scale})
    return {group: {"pairs": len(items), **{name: sum(item[name] for item in items) / len(items)
                                            for name in ("margin", "key", "shortcut", "rest", "grad_scale")}}
            for group, items in groups.items() if items}


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="base,shortcut,shortcut-rejected")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="default", help="KeyFact base model size (small: the tests' model)")
    parser.add_argument("--train_size", type=int, default=512)
    args = parser.parse_args(argv)
    settings = BenchSettings(rows=["uniform"], seeds=[args.seed], variants=args.variants.split(","),
                             model_size=args.size, train_size=args.train_size)
    base_path = str(keyfact_base_model(size=args.size))
    table = []
    with one_thread():
        for variant in settings.variants:
            for group, means in margin_parts(variant, args.seed, settings, base_path).items():
                table.append([variant, group, str(means["pairs"]), *(f"{means[name]:+.3f}" for name in
                              ("margin", "key", "shortcut", "rest")), f"{means['grad_scale']:.3f}"])
    print(command_line())
    print(markdown_table(["variant", "sentence on", "pairs", "Δ", "key part", "shortcut part", "rest",
                          "σ(−βΔ)"], table))
    return table


if __name__ == "__main__":
    main()
