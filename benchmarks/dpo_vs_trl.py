"""Training throughput and peak memory: tokenweight (``weighting=uniform``) vs TRL's ``DPOTrainer``, side by side.

    python benchmarks/dpo_vs_trl.py                           # CPU: Llama 4 × 256, vocab 16k, batch 2, 10 steps
    python benchmarks/dpo_vs_trl.py --device cuda --batch 8 --completion 512 --steps 30

Both trainers get the same seeded Llama (policy and a reference copy), the same synthetic standard-format
preference rows (prompt ``--prompt`` words, completions of ``--completion/2 .. --completion`` words from a
``--vocab``-word tokenizer), the same batch, sequential data order, optimizer (AdamW, constant lr) and fp32, no
gradient checkpointing. Each runs in a fresh process (see ``benchmarks/_common.py`` for the memory method):
``--warmup`` steps, then ``--steps`` timed steps; steps/s is over the timed steps, peak memory over the whole
``train()`` call (it includes the AdamW state, the same for both).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import MIB, PeakMemory, command_line, markdown_table, run_child  # noqa: E402

TRAINERS = ("tokenweight", "trl")


def make_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")


def make_rows(count: int, vocab: int, prompt: int, completion: int) -> list[dict]:
    rng = random.Random(0)
    text = lambda n: " ".join(f"w{rng.randrange(vocab - 4)}" for _ in range(n))  # noqa: E731
    return [{"prompt": text(prompt), "chosen": " " + text(rng.randint(completion // 2, completion)),
             "rejected": " " + text(rng.randint(completion // 2, completion))} for _ in range(count)]


def make_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64,
                         max_position_embeddings=args.prompt + args.completion + 8,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(args.device)


def _child(args) -> None:
    import datasets
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *_, **__):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer(args.vocab)
    steps = args.warmup + args.steps
    dataset = datasets.Dataset.from_list(make_rows(steps * args.batch, args.vocab, args.prompt, args.completion))
    policy, reference = make_model(args), make_model(args)
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
                  train_sampling_strategy="sequential", report_to=[], save_strategy="no", logging_steps=steps,
                  disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False,
                  use_cpu=args.device == "cpu", beta=0.1, max_length=None, seed=0)
    if args.child == "trl":
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=policy, ref_model=reference, train_dataset=dataset, processing_class=tokenizer,
                             args=DPOConfig(loss_type=["sigmoid"], dataset_num_proc=None, **common))
    else:
        from tokenweight.config import TokenweightConfig
        from tokenweight.data import tokenize_preference_dataset
        from tokenweight.trainer import TokenweightTrainer
        tokenized, _ = tokenize_preference_dataset(dataset, tokenizer, max_length=None)
        trainer = TokenweightTrainer(policy, reference, train_dataset=tokenized, processing_class=tokenizer,
                                     args=TokenweightConfig(loss_type="sigmoid", weighting="uniform", **common))
    clock = StepClock()
    trainer.add_callback(clock)
    with PeakMemory(args.device) as peak:
        result = trainer.train()
    timed = clock.times[args.warmup - 1:] if args.warmup else clock.times
    seconds = timed[-1] - timed[0]
    print(__import__("json").dumps({"steps_per_second": (len(timed) - 1) / seconds,
                                    "peak_added_bytes": peak.added_bytes, "train_loss": result.training_loss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length in words (= tokens)")
    parser.add_argument("--completion", type=int, default=256, help="max completion length in words")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (1: stable on shared machines)")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's start is its reference time)")
    if args.child:
        _child(args)
        return
    shared = [f"--{k}={getattr(args, k)}" for k in ("device", "vocab", "hidden", "layers", "batch", "prompt",
                                                     "completion", "warmup", "steps", "threads")]
    results = {name: run_child(__file__, ["--child", name, *shared]) for name in TRAINERS}
    ours, trl = results["tokenweight"], results["trl"]
    print(f"`{command_line()}`\n")
    device = f"cpu ({args.threads} thread(s))" if args.device == "cpu" else args.device
    print(f"Llama {args.layers} layers × hidden {args.hidden}, vocab {args.vocab}, batch {args.batch} pairs, prompt "
          f"{args.prompt} + completion ≤ {args.completion} tokens, {args.steps} timed steps after {args.warmup} "
          f"warm-up, {device}, fp32; mean training loss: tokenweight {ours['train_loss']:.6f}, "
          f"TRL {trl['train_loss']:.6f}\n")
    rows = [["tokenweight (uniform)", f"{ours['steps_per_second']:.3f}", f"{ours['peak_added_bytes'] / MIB:.1f}"],
            ["TRL DPOTrainer", f"{trl['steps_per_second']:.3f}", f"{trl['peak_added_bytes'] / MIB:.1f}"],
            ["**ratio tokenweight / TRL**", f"**{ours['steps_per_second'] / trl['steps_per_second']:.3f}**",
             f"**{ours['peak_added_bytes'] / trl['peak_added_bytes']:.3f}**"]]
    print(markdown_table(["trainer", "steps / s", "peak memory added (MiB)"], rows))


if __name__ == "__main__":
    main()
