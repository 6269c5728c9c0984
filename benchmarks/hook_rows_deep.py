"""Hook rows on a deep (12-layer) model, per architecture: exactness on an eager forward, the recomputation's own
error, and the SDPA-vs-eager drift.

    python benchmarks/hook_rows_deep.py

For each architecture of ``tests/test_attention_rows.py`` (same configs, seeds and left-padded batch), against the
eager ``output_attentions`` row of every layer: whether the hook on an eager forward is bit-exact, the max abs
error of the row recomputed from the same (eager) layer inputs, and the max abs difference of the hook on an SDPA
forward (the hidden states drift through the layers; Gemma 2 has no SDPA path in transformers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_attention_rows import CONFIGS, DEEP, _all_eager_rows, _batch  # noqa: E402

from tokenweight.masks import position_ids_from_mask  # noqa: E402
from tokenweight.weights.attention import rows  # noqa: E402


def main() -> None:
    print(f"| architecture ({DEEP} layers) | hook on eager forward bit-exact | recomputed row, max abs error | "
          "hook on SDPA − eager, max abs |")
    print("|---|---|---|---|")
    for model_type in sorted(CONFIGS):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[model_type](DEEP), attn_implementation="eager").eval()
        input_ids, mask = _batch("left")
        want = _all_eager_rows(model, input_ids, mask)
        layers = list(range(DEEP))
        exact = all(torch.equal(rows.last_token_attention(model, input_ids, mask, layers=[i]), want[i])
                    for i in layers)
        positions = position_ids_from_mask(mask)
        with torch.no_grad():
            recomputed = rows._hook_rows(model, input_ids, mask, positions, layers, rows.attention_modules(model),
                                         recompute=True)
        error = max((got - want[i]).abs().max().item() for got, i in zip(recomputed, layers))
        drift = "no SDPA"
        if model_type != "gemma2":
            model.set_attn_implementation("sdpa")
            sdpa = [rows.last_token_attention(model, input_ids, mask, layers=[i]) for i in layers]
            drift = f"{max((got - want[i]).abs().max().item() for got, i in zip(sdpa, layers)):.1e}"
        print(f"| {model_type} | {'yes' if exact else 'NO'} | {error:.1e} | {drift} |", flush=True)


if __name__ == "__main__":
    main()
