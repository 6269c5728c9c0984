"""Where a step's time goes, padded against ``--padding_free``: the transformer body against the output head.

    python benchmarks/padding_free_breakdown.py --vocab 128256 --hidden 64 --layers 2   # the issue's shape
    python benchmarks/padding_free_breakdown.py --vocab 8192 --hidden 512 --layers 4    # body-dominated

One process, one seeded Llama policy and a reference copy (``benchmarks/dpo_vs_trl.py``'s model and rows: batch
``--batch`` pairs with UltraFeedback-like lengths), the batch collated as the trainer collates it. Per layout (padded
``[2B, L]``; packed: the rows end to end in ``[P, W]`` packs, ``tokenweight.logps.packed_hidden``) it times

- **step**: what a training step's scoring costs: the policy's scoring forward over the completion positions
  (``score_tokens=True``, the tiled head), the backward of ``Σ log p``, and the reference's no-grad scoring forward;
- **body**: the same without the head: the policy's final hidden states, the backward of a sum over the completion
  positions' states, and the reference's no-grad hidden states.

``step − body`` is the head's share (it scores the same completion positions in both layouts). The two layouts
alternate, the first one swapped every round, ``--rounds`` rounds after one warm-up each; the report gives the median
and range of each time and of padded / padding-free. Times are the process's CPU time (``time.process_time``, one
torch thread): on a shared machine they do not count the time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, markdown_table  # noqa: E402
from dpo_vs_trl import make_model, make_rows, make_tokenizer  # noqa: E402


def make_batch(args) -> dict:
    """The collated ``[2B, L]`` batch of ``args.batch`` UltraFeedback-like pairs."""
    import datasets

    from tokenweight.data import PreferenceCollator, tokenize_preference_dataset

    tokenizer = make_tokenizer(args.vocab)
    rows = make_rows(args.batch, args.vocab, args.prompt, args.completion, "ultrafeedback")
    dataset, _ = tokenize_preference_dataset(datasets.Dataset.from_list(rows), tokenizer)
    return PreferenceCollator(tokenizer.pad_token_id)(list(dataset))


def timers(policy, reference, batch: dict) -> dict:
    """``{(part, layout): callable}``: one timed unit of work each (module docstring)."""
    import torch

    from tokenweight.logps import backbone, packed_hidden

    ids, attention, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]

    def hidden(model, padding_free: bool):
        if padding_free:
            return packed_hidden(model, ids, attention)[:, :-1]
        return backbone(model)(ids, attention_mask=attention, use_cache=False).last_hidden_state[:, :-1]

    def scores(model, padding_free: bool):
        return model(input_ids=ids, attention_mask=attention, score_tokens=True, score_mask=mask,
                     padding_free=padding_free).token_logps

    def step(padding_free: bool):
        scores(policy, padding_free).sum().backward()
        with torch.no_grad():
            scores(reference, padding_free)

    def body(padding_free: bool):
        hidden(policy, padding_free)[mask].float().sum().backward()
        with torch.no_grad():
            hidden(reference, padding_free)

    return {(part, layout): (lambda f=f, free=layout == "padding-free": f(free))
            for part, f in (("step", step), ("body", body)) for layout in ("padded", "padding-free")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="preference pairs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.device, args.prompt, args.completion = "cpu", 128, 448  # make_model's position table: the longest rows
    import torch

    from tokenweight.logps import enable_token_scoring, pack_plan

    torch.set_num_threads(args.threads)
    batch = make_batch(args)
    policy, reference = (enable_token_scoring(make_model(args)) for _ in range(2))
    reference.requires_grad_(False)
    units = timers(policy, reference, batch)
    for unit in units.values():  # warm-up
        unit()
        policy.zero_grad(set_to_none=True)
    times = {key: [] for key in units}
    for round_ in range(args.rounds):
        for part in ("step", "body"):
            layouts = ("padded", "padding-free") if round_ % 2 == 0 else ("padding-free", "padded")
            for layout in layouts:
                start = time.process_time()
                units[part, layout]()
                times[part, layout].append(time.process_time() - start)
                policy.zero_grad(set_to_none=True)
        print(f"round {round_ + 1}/{args.rounds}: {[round(t[-1], 3) for t in times.values()]}", file=sys.stderr)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    packs = pack_plan(lengths, max(lengths))
    width = max(sum(lengths[r] for r in pack) for pack in packs)

    def cell(values):
        return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"

    head = {layout: [s - b for s, b in zip(times["step", layout], times["body", layout])]
            for layout in ("padded", "padding-free")}
    rows = [[layout, f"{shape[0]} × {shape[1]}", cell(times["step", layout]), cell(times["body", layout]),
             cell(head[layout])]
            for layout, shape in (("padded", tuple(batch["input_ids"].shape)), ("padding-free", (len(packs), width)))]
    pairs = ((times["step", "padded"], times["step", "padding-free"]),
             (times["body", "padded"], times["body", "padding-free"]), (head["padded"], head["padding-free"]))
    rows.append(["padded / padding-free", "", *(cell([p / f for p, f in zip(a, b)]) for a, b in pairs)])
    print(f"`{command_line()}`\n")
    print(f"Llama {args.layers} layers × hidden {args.hidden}, vocab {args.vocab}, {args.batch} pairs, "
          f"UltraFeedback-like lengths: {sum(lengths)} real tokens, {int(batch['loss_mask'].sum())} completion "
          f"positions scored; cpu ({args.threads} thread(s)), fp32, {args.rounds} rounds (layouts alternated, first "
          "swapped every round); CPU seconds, median [range]\n")
    print(markdown_table(["layout", "sequences × width", "step: policy scoring fwd+bwd + reference fwd (s)",
                          "body only (s)", "head = step − body (s)"], rows))


if __name__ == "__main__":
    main()
