"""Training throughput and peak memory: tokenweight (``weighting=uniform``) vs TRL's ``DPOTrainer``, side by side.

    python benchmarks/dpo_vs_trl.py                           # CPU: Llama 4 × 256, vocab 16k, batch 2, 10 steps
    python benchmarks/dpo_vs_trl.py --vocab 128256 --hidden 64 --layers 2 --batch 8 --lengths ultrafeedback \
        --warmup 1 --steps 2 --rounds 3 --variants tokenweight,tokenweight+padding_free,trl,tokenweight+precompute,trl+precompute
    python benchmarks/dpo_vs_trl.py --device cuda --batch 8 --completion 512 --steps 30

Both trainers get the same seeded Llama (policy and a reference copy), the same synthetic standard-format
preference rows from a ``--vocab``-word tokenizer, the same batch, sequential data order, optimizer (AdamW, constant
lr) and fp32, no gradient checkpointing. Lengths: ``uniform`` (prompt ``--prompt`` words, completions of
``--completion/2 .. --completion`` words) or ``ultrafeedback`` (right-skewed like UltraFeedback: prompts 16–128,
completions 16–448 tokens, log-normal, drawn independently for chosen and rejected).

Variants (``--variants``): ``tokenweight``, ``tokenweight+padding_free``, ``trl``, and ``+precompute`` of either
(``precompute_ref_log_probs``: the reference scores the data once before training). Each run is a fresh process (see
``benchmarks/_common.py``): ``--warmup`` steps, then ``--steps`` timed steps; steps/s is over the timed steps, by the
wall clock and by the process's CPU time (``time.process_time``; with one thread on a shared machine it does not
count the time spent waiting for a core, so its ratios are the steadier ones).
Memory: the whole process's peak resident set (``ru_maxrss`` at its end: the interpreter, both models, the AdamW state,
any precompute, every step), and the peak added by ``train()`` (CUDA: allocated bytes). ``--rounds`` rounds run
every variant once each, the order rotated by one every round (each variant goes first in turn); the report gives the
median and the range over the rounds of each figure and of each variant's ratios to its TRL counterpart taken within
a round (``tokenweight+precompute`` against ``trl+precompute``, the others against ``trl``), and of padding-free
against our padded path.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table, run_child  # noqa: E402

VARIANTS = ("tokenweight", "tokenweight+padding_free", "trl", "tokenweight+precompute", "trl+precompute")


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")


def ultrafeedback_length(rng: random.Random, median: float, low: int, high: int) -> int:
    """A right-skewed (log-normal, σ 0.7) length around ``median``, clipped to ``[low, high]``."""
    return min(high, max(low, int(math.exp(rng.gauss(math.log(median), 0.7)))))


def make_rows(count: int, vocab: int, prompt: int, completion: int, lengths: str = "uniform") -> list[dict]:
    """``count`` standard-format rows of ``w<i>`` words; ``lengths``: see the module docstring."""
    rng = random.Random(0)
    text = lambda n: " ".join(f"w{rng.randrange(vocab - 4)}" for _ in range(n))  # noqa: E731
    if lengths == "ultrafeedback":
        return [{"prompt": text(ultrafeedback_length(rng, 40, 16, 128)),
                 "chosen": " " + text(ultrafeedback_length(rng, 150, 16, 448)),
                 "rejected": " " + text(ultrafeedback_length(rng, 150, 16, 448))} for _ in range(count)]
    return [{"prompt": text(prompt), "chosen": " " + text(rng.randint(completion // 2, completion)),
             "rejected": " " + text(rng.randint(completion // 2, completion))} for _ in range(count)]


def make_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64,
                         max_position_embeddings=max(args.prompt + args.completion, 128 + 448) + 8,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(args.device)


def _child(args) -> None:
    import datasets
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.cpu_times = [], []

        def on_step_end(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer(args.vocab)
    steps = args.warmup + args.steps
    dataset = datasets.Dataset.from_list(make_rows(steps * args.batch, args.vocab, args.prompt, args.completion,
                                                   args.lengths))
    trainer_name, _, option = args.child.partition("+")
    policy, reference = make_model(args), make_model(args)
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
                  train_sampling_strategy="sequential", report_to=[], save_strategy="no", logging_steps=steps,
                  disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False,
                  use_cpu=args.device == "cpu", beta=0.1, max_length=None, seed=0,
                  precompute_ref_log_probs=option == "precompute")
    if trainer_name == "trl":
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=policy, ref_model=reference, train_dataset=dataset, processing_class=tokenizer,
                             args=DPOConfig(loss_type=["sigmoid"], dataset_num_proc=None, **common))
    else:
        from tokenweight.config import TokenweightConfig
        from tokenweight.data import tokenize_preference_dataset
        from tokenweight.trainer import TokenweightTrainer
        tokenized, _ = tokenize_preference_dataset(dataset, tokenizer, max_length=None)
        trainer = TokenweightTrainer(policy, reference, train_dataset=tokenized, processing_class=tokenizer,
                                     args=TokenweightConfig(loss_type="sigmoid", weighting="uniform",
                                                            padding_free=option == "padding_free", **common))
    clock = StepClock()
    trainer.add_callback(clock)
    with PeakMemory(args.device) as peak:
        result = trainer.train()
    timed, cpu = clock.times[args.warmup - 1:], clock.cpu_times[args.warmup - 1:]
    print(__import__("json").dumps({"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]),
                                    "steps_per_cpu_second": (len(cpu) - 1) / (cpu[-1] - cpu[0]),
                                    "peak_added_bytes": peak.added_bytes, "train_loss": result.training_loss,
                                    "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def rotated(variants: list[str], rounds: int) -> list[list[str]]:
    """The run order of each round: the variants rotated by one more every round (each goes first in turn)."""
    return [variants[r % len(variants):] + variants[:r % len(variants)] for r in range(rounds)]


def counterpart(name: str, variants) -> str:
    """The TRL run ``name`` is compared with: ``trl+precompute`` for ``tokenweight+precompute`` when it ran, else
    ``trl``."""
    return "trl+precompute" if name.endswith("+precompute") and "trl+precompute" in variants else "trl"


def per_round(results: dict[str, list[dict]], name: str, other: str, key: str) -> list[float]:
    """``name``'s ``key`` over ``other``'s in the same round, one per round."""
    return [run[key] / base[key] for run, base in zip(results[name], results[other])]


def median_range(values, scale=1.0, digits=3) -> str:
    """``"median [min–max]"`` of ``values / scale``."""
    values = [v / scale for v in values]
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def summary_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    """Table rows: per variant the median [min–max] over the rounds of steps/s (wall, CPU), whole-process peak and
    train() peak (MiB), its TRL counterpart (:func:`counterpart`), and the median [min–max] of its per-round ratios to
    it."""
    rows = []
    for name, runs in results.items():
        other = counterpart(name, results)
        rows.append([name, median_range([r["steps_per_second"] for r in runs]),
                     median_range([r["steps_per_cpu_second"] for r in runs]),
                     median_range([r["process_peak_bytes"] for r in runs], MIB, 0),
                     median_range([r["peak_added_bytes"] for r in runs], MIB, 0), other,
                     *(median_range(per_round(results, name, other, key), digits=2)
                       for key in ("steps_per_second", "steps_per_cpu_second", "process_peak_bytes",
                                   "peak_added_bytes"))])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length in words (= tokens)")
    parser.add_argument("--completion", type=int, default=256, help="max completion length in words")
    parser.add_argument("--lengths", choices=("uniform", "ultrafeedback"), default="uniform")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="tokenweight,trl", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (1: stable on shared machines)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's start is its reference time)")
    variants = args.variants.split(",")
    if not set(variants) <= set(VARIANTS) or "trl" not in variants:
        parser.error(f"--variants: choose among {', '.join(VARIANTS)}, including trl (the baseline)")
    if args.child:
        _child(args)
        return
    shared = [f"--{k}={getattr(args, k)}" for k in ("device", "vocab", "hidden", "layers", "batch", "prompt",
                                                     "completion", "lengths", "warmup", "steps", "threads")]
    results = {name: [] for name in variants}
    for round_, order in enumerate(rotated(variants, args.rounds)):
        for name in order:
            results[name].append(run_child(__file__, ["--child", name, *shared]))
            print(f"round {round_ + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"`{command_line()}`\n")
    device = f"cpu ({args.threads} thread(s))" if args.device == "cpu" else args.device
    shape = (f"prompt {args.prompt} + completion ≤ {args.completion} tokens" if args.lengths == "uniform" else
             "UltraFeedback-like lengths (prompts 16–128, completions 16–448 tokens, right-skewed)")
    losses = ", ".join(f"{name} {statistics.median(r['train_loss'] for r in runs):.6f}"
                       for name, runs in results.items())
    print(f"Llama {args.layers} layers × hidden {args.hidden}, vocab {args.vocab}, batch {args.batch} pairs, {shape}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {device}, fp32, {args.rounds} rounds (order rotated "
          f"every round); mean training loss: {losses}\n")
    print(markdown_table(["variant", "steps / s, median [range]", "steps / CPU-s, median [range]",
                          "process peak MiB, median [range]", "train() peak added MiB, median [range]", "against",
                          "speed / against, per round", "CPU speed / against, per round",
                          "process peak / against, per round", "train() peak added / against, per round"],
                         summary_rows(results)))
    if "tokenweight" in results and "tokenweight+padding_free" in results:
        ratio = {key: median_range(per_round(results, "tokenweight+padding_free", "tokenweight", key), digits=2)
                 for key in ("steps_per_second", "steps_per_cpu_second", "process_peak_bytes")}
        print(f"\nPadding-free against our padded path, per round: steps/s {ratio['steps_per_second']}, steps per "
              f"CPU-second {ratio['steps_per_cpu_second']}, whole-process peak {ratio['process_peak_bytes']}.")


if __name__ == "__main__":
    main()
