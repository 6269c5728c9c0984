"""The scale path's GPU check, one command on one GPU, nothing downloaded: a ~1.1B-parameter Llama built from a
config (hidden 2048, 16 layers, GQA 32/8 heads, MLP 8192, vocab 32000), bf16 weights, SDPA attention.

    python benchmarks/gpu_check.py                        # one GPU, ~5 minutes on an H100-class card
    python benchmarks/gpu_check.py --tiny                 # the same code on CPU, tiny config, fp32 (tests run it)
    python benchmarks/gpu_check.py --output gpu_check.md  # also write the tables to a file

Three parts, each side by side in this one run:

1. **Every scheme's training step against ``uniform``** (the variants of ``benchmarks/step_overhead.py``, incl.
   ``uniform (cached reference)``): 2 pairs of ≤ 2048 tokens (prompt 256 + completion ≤ 1792), median step time
   of ``--steps`` AdamW steps after one warm-up, and the peak memory with the models resident (CUDA:
   ``max_memory_allocated`` from before the models are built).
2. **The OTPO solver against the per-pair POT loop** at B=8, 2048 chosen tokens, d=4096 (the functions of
   ``benchmarks/otpo_solver.py``), with their max relative difference.
3. **The AttentionPO judge pass (interface rows) against eager ``output_attentions`` maps** at judge length 2048 on the
   model above: peak memory, time and max absolute difference of the rows.
4. **tokenweight against TRL's ``DPOTrainer`` at the shapes users train** (``benchmarks/dpo_vs_trl.py``, each variant
   in a fresh process, 3 rounds with the order rotated): vocabulary 128,256, batch 8, UltraFeedback-like lengths
   (padded, ``padding_free``, and ``precompute_ref_log_probs`` on both sides), and a body-dominated shape (vocabulary
   32,000, 16 layers), and the default shape with ``precompute_ref_log_probs`` on both sides. On a GPU TRL scores
   completion tokens only with its fused head: this is the real comparison (its CPU fallback is slow, so CPU speed
   ratios against TRL prove little).

On CPU (``--tiny``) the memory figures are resident-set deltas inside one process and only show that the code runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table  # noqa: E402
from dpo_vs_trl import make_rows, make_tokenizer  # noqa: E402
from otpo_solver import compare, make_inputs, max_relative_difference  # noqa: E402
from step_overhead import VARIANTS, build_trainer, timed_steps, variant_dataset  # noqa: E402

SIZES = {
    "1b": {"vocab": 32000, "hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192,
           "prompt": 256, "completion": 1792, "otpo": (8, 2048, 4096), "judge_length": 2048, "dtype": "bfloat16",
           "steps": 5, "overrides": {}},
    "tiny": {"vocab": 512, "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
             "prompt": 16, "completion": 48, "otpo": (2, 64, 64), "judge_length": 128, "dtype": "float32",
             "steps": 1, "overrides": {"tidpo_anchor_max_new_tokens": 8}},
}
PAIRS = 2
#: Part 4: ``benchmarks/dpo_vs_trl.py`` flags per shape (``--device`` is added).
TRL_SHAPES = {
    "1b": {"vocabulary 128,256, UltraFeedback-like lengths": [
               "--vocab=128256", "--hidden=1024", "--layers=8", "--batch=8", "--lengths=ultrafeedback", "--warmup=2",
               "--steps=5", "--rounds=3", "--variants=tokenweight,tokenweight+padding_free,trl,"
               "tokenweight+precompute,trl+precompute"],
           "body-dominated: vocabulary 32,000, 16 layers × 1024": [
               "--vocab=32000", "--hidden=1024", "--layers=16", "--batch=8", "--lengths=ultrafeedback", "--warmup=2",
               "--steps=5", "--rounds=3", "--variants=tokenweight,tokenweight+padding_free,trl"],
           "default shape: vocabulary 16,000, 4 layers × 256, batch 2": [
               "--rounds=3", "--variants=tokenweight,trl,tokenweight+precompute,trl+precompute"]},
    "tiny": {"tiny, UltraFeedback-like lengths": [
               "--vocab=512", "--hidden=64", "--layers=1", "--batch=2", "--lengths=ultrafeedback", "--warmup=1",
               "--steps=1", "--rounds=1", "--variants=tokenweight,tokenweight+padding_free,trl,tokenweight+precompute,"
               "trl+precompute"]},
}


def make_model(size: dict, device: str):
    """The seeded Llama of ``size``, built directly on ``device`` in the size's dtype, SDPA attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                         intermediate_size=size["intermediate"],
                         max_position_embeddings=max(size["prompt"] + size["completion"] + 64, size["judge_length"]),
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, size["dtype"]))
    model.set_attn_implementation("sdpa")
    return model.eval()


def _free(device: str) -> None:
    import gc

    import torch
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def scheme_steps(size: dict, device: str, steps: int) -> str:
    """Part 1: the step table of every variant of ``step_overhead.py``."""
    from tokenweight.data import PreferenceCollator

    tokenizer = make_tokenizer(size["vocab"])
    rows = make_rows(PAIRS, size["vocab"], size["prompt"], size["completion"])
    results, padded = {}, 0
    for variant in VARIANTS:
        dataset = variant_dataset(variant, tokenizer, rows)
        with PeakMemory(device) as with_models:
            trainer = build_trainer(variant, tokenizer, lambda: make_model(size, device), device,
                                    size["prompt"] + size["completion"] + 64, **size["overrides"])
            batch = {k: v.to(device) for k, v in PreferenceCollator(tokenizer.pad_token_id)(list(dataset)).items()}
            times, _, _ = timed_steps(trainer, batch, steps, device)
        padded = batch["input_ids"].shape[1]
        results[variant] = (statistics.median(times), with_models.added_bytes / MIB)
        print(f"{variant}: {results[variant]}", file=sys.stderr, flush=True)
        del trainer, batch
        _free(device)
    base_time, base_mem = results["uniform"]
    table = [[v, f"{t * 1000:.0f}", f"{t / base_time:.2f}", f"{m:.0f}", f"{m / base_mem:.2f}"]
             for v, (t, m) in results.items()]
    return (f"{PAIRS} pairs, prompt {size['prompt']} + completion ≤ {size['completion']} tokens (batch padded to "
            f"{padded} tokens), median of {steps} steps\n\n"
            + markdown_table(["scheme", "step (ms)", "time vs uniform", "peak MiB with models", "memory vs uniform"],
                             table))


def otpo_solver(size: dict, device: str, budget: float) -> str:
    """Part 2: batched OTPO weights against the per-pair POT loop on the same bf16 states."""
    from tokenweight.weights.otpo import OTPOScheme, OTPOSettings

    pairs, length, hidden = size["otpo"]
    scheme = OTPOScheme(OTPOSettings(otpo_reg=1.0, otpo_reg_m=[0.2]))
    inputs = make_inputs(pairs, length, hidden, 128, device)
    cell = compare(inputs, scheme, 1.0, 0.2, device, budget, rounds=3)
    ours, pot = statistics.median(cell.ours), statistics.median(cell.pot)
    mark = "*" if cell.extrapolated else ""
    row = [str(pairs), f"{length}/{3 * length // 4}", str(hidden), f"{ours:.3f}", f"{pot:.3f}{mark}",
           f"{statistics.median(cell.ratios):.1f}{mark}",
           f"{max_relative_difference(cell.weights, cell.official, pairs):.1e}"]
    note = f"\n\n\\* extrapolated from one pair × B (the loop would exceed {budget} s)" if cell.extrapolated else ""
    return ("reg 1.0, reg_m 0.2, prompt 128 tokens, rejected = 3/4 of chosen, bf16 states, median of 3 interleaved "
            "rounds\n\n") + markdown_table(
        ["B", "chosen/rejected tokens", "d", "ours (s)", "POT per-pair loop (s)", "POT/ours", "max rel. diff"],
        [row]) + note


def judge_pass(size: dict, device: str) -> str:
    """Part 3: one judge pass of ``judge_length`` tokens, interface rows against eager attention maps (last layer)."""
    import torch

    from tokenweight.weights.attention import last_token_attention

    model = make_model(size, device)
    ids = torch.randint(4, size["vocab"], (1, size["judge_length"]), generator=torch.Generator().manual_seed(1))
    ids, mask = ids.to(device), torch.ones_like(ids).to(device)
    rows, table = {}, []
    for method in ("interface", "eager"):
        last_token_attention(model, ids[:, :16], mask[:, :16], method=method)  # warm-up
        _free(device)
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            rows[method] = last_token_attention(model, ids, mask, method=method)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        table.append([method, f"{peak.added_bytes / MIB:.0f}", f"{seconds:.3f}"])
    ratio = float(table[0][1]) / max(float(table[1][1]), 1e-9)
    difference = (rows["interface"] - rows["eager"]).abs().max().item()
    del model
    _free(device)
    return (f"judge length {size['judge_length']}, last layer, batch 1\n\n"
            + markdown_table(["method", "peak MiB added", "time (s)"], table)
            + f"\n\nmemory interface / eager: {ratio:.3f}; max abs difference of the rows: {difference:.1e}")


def trl_comparison(shapes: dict[str, list[str]], device: str) -> str:
    """Part 4: the report of ``benchmarks/dpo_vs_trl.py`` for each shape (each run in fresh processes)."""
    import subprocess

    sections = []
    for title, flags in shapes.items():
        result = subprocess.run([sys.executable, str(Path(__file__).with_name("dpo_vs_trl.py")), f"--device={device}",
                                 *flags], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dpo_vs_trl.py {' '.join(flags)} failed:\n{result.stderr[-3000:]}")
        sections.append(f"#### {title}\n\n{result.stdout.strip()}")
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (same code; a smoke test)")
    parser.add_argument("--device", help="default: cuda, or cpu with --tiny")
    parser.add_argument("--steps", type=int, help="timed steps per scheme (default 5; 1 with --tiny)")
    parser.add_argument("--max-pot-seconds", type=float, default=60.0)
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    import torch

    size = SIZES["tiny" if args.tiny else "1b"]
    device = args.device or ("cpu" if args.tiny else "cuda")
    if args.tiny:
        torch.set_num_threads(1)  # a tiny model: more threads only contend
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --tiny for the CPU smoke run")
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    model = make_model(size, "meta")
    parameters = sum(p.numel() for p in model.parameters())
    del model
    sections = [f"`{command_line()}`",
                f"{name}, torch {torch.__version__}; Llama {size['layers']} × {size['hidden']} "
                f"({parameters / 1e6:,.1f}M parameters), vocab {size['vocab']}, {size['dtype']}, SDPA",
                "### Training step of every scheme vs uniform", scheme_steps(size, device, args.steps or size["steps"]),
                "### OTPO solver vs the per-pair POT loop", otpo_solver(size, device, args.max_pot_seconds),
                "### AttentionPO judge pass: interface rows vs eager maps", judge_pass(size, device),
                "### tokenweight vs TRL DPOTrainer at the shapes users train",
                trl_comparison(TRL_SHAPES["tiny" if args.tiny else "1b"], device)]
    report = "\n\n".join(sections) + "\n"
    print(report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
