"""Attention rows on a deep (12-layer) model, per architecture: exactness on an eager forward and the drift on the
architecture's default attention (SDPA).

    python benchmarks/attention_rows_deep.py

For each architecture of ``tests/architectures.py`` that routes its attention through transformers' attention
interface (same configs, seeds and left-padded batch as ``tests/test_attention_rows.py``), against the eager
``output_attentions`` row of every layer: whether the row recorded on an eager forward is bit-exact, and the max abs
difference of the row recorded on the default (SDPA) forward, computed from the query/key states the layer passes to
its attention function (the hidden states drift through the layers; Gemma 2 has no SDPA path in transformers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from architectures import tiny_config  # noqa: E402
from test_attention_rows import DEEP, INTERFACE, _all_eager_rows, _batch  # noqa: E402

from tokenweight.weights.attention.rows import last_token_attention  # noqa: E402


def main() -> None:
    print(f"| architecture ({DEEP} layers) | row on eager forward bit-exact | row on SDPA − eager, max abs |")
    print("|---|---|---|")
    for name in INTERFACE:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(name, DEEP)).eval()
        default = model.config._attn_implementation
        input_ids, mask = _batch("left")
        want = _all_eager_rows(model, input_ids, mask)
        layers = list(range(DEEP))
        model.set_attn_implementation("eager")
        exact = all(torch.equal(last_token_attention(model, input_ids, mask, layers=[i]), want[i]) for i in layers)
        drift = "no SDPA"
        if default != "eager":
            model.set_attn_implementation(default)
            got = [last_token_attention(model, input_ids, mask, layers=[i]) for i in layers]
            drift = f"{max((row - want[i]).abs().max().item() for row, i in zip(got, layers)):.1e}"
        print(f"| {name} | {'yes' if exact else 'NO'} | {drift} |", flush=True)


if __name__ == "__main__":
    main()
