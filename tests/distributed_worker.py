"""A short CPU training run of ``TokenweightTrainer`` for ``tests/test_distributed.py``.

Run once under ``accelerate launch --multi_gpu --num_processes 2`` (DDP; with ``use_cpu`` the processes join a
gloo group) or ``accelerate launch --config_file fsdp.yaml --num_processes 2`` (FSDP2), and once as a plain single
process with ``--grad_accum 2``. It trains each scheme of ``--weighting`` (comma-separated) in turn, in the same
processes (a launch costs more than these trainings). Per scheme ``W``, every process writes the dataset rows of
each of its micro-batches and how its policy and reference are sharded to ``OUT/W/rows_rank{r}.json``; the main
process writes the trained (full) parameters to ``OUT/W/params.pt`` and the logged metrics to
``OUT/W/log_history.json``.

    python tests/distributed_worker.py OUT --grad_accum 2 [--weighting uniform,otpo+padding_free] [--tidpo_gamma 0.1]

A scheme named ``W+padding_free`` trains ``W`` with ``padding_free=True`` (rows packed) into ``OUT/W+padding_free``.

TI-DPO runs without its triplet term unless ``--tidpo_gamma`` is given; its attribution pass and TDPO2 KL term are
exercised. Anchors are seeded per dataset row and step, so processes and a single process draw the same ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import datasets
import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_model, make_tokenizer, standard_rows  # noqa: E402

from tokenweight.config import TokenweightConfig  # noqa: E402
from tokenweight.data import tokenize_preference_dataset  # noqa: E402
from tokenweight.pipeline import prepare_raw  # noqa: E402
from tokenweight.trainer import TokenweightTrainer  # noqa: E402
from tokenweight.weights.base import scheme_class  # noqa: E402


class RowRecorder:
    """Collator wrapper remembering the ``row_index`` of every micro-batch."""

    def __init__(self, collator):
        self.collator = collator
        self.rows: list[list[int]] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.rows.append(batch["row_index"].tolist())
        return batch


def sharding(model: torch.nn.Module | None) -> dict | None:
    """Whether ``model`` is an FSDP2 module, and per parameter ``[local elements, full elements]``; ``None`` for no
    model (a reference-free scheme's reference)."""
    if model is None:
        return None
    return {"fsdp_module": isinstance(model, FSDPModule),
            "params": {name: [p.to_local().numel() if isinstance(p, DTensor) else p.numel(), p.numel()]
                       for name, p in model.named_parameters()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--weighting", default="uniform", help="comma-separated schemes, trained in turn")
    parser.add_argument("--tidpo_gamma", type=float, default=0.0)
    cli = parser.parse_args()
    for weighting in cli.weighting.split(","):
        train_one(cli, weighting, cli.out / weighting)


def train_one(cli: argparse.Namespace, weighting: str, out: Path) -> None:
    """One scheme's short training; writes ``out/rows_rank{r}.json`` (every process), ``out/params.pt`` and
    ``out/log_history.json`` (the main process)."""
    weighting, padding_free = weighting.removesuffix("+padding_free"), weighting.endswith("+padding_free")
    tokenizer = make_tokenizer()
    args = TokenweightConfig(output_dir=str(out / "run"), use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, max_steps=cli.steps, per_device_train_batch_size=cli.batch,
                             gradient_accumulation_steps=cli.grad_accum, train_sampling_strategy="sequential",
                             learning_rate=1e-2, lr_scheduler_type="constant", optim="adamw_torch",
                             weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, beta=0.1, seed=0,
                             max_length=None, weighting=weighting,
                             tidpo_gamma=cli.tidpo_gamma, padding_free=padding_free)
    # A context that holds AttentionPO's judge template (the parameters do not depend on it).
    reference = make_model(len(tokenizer), seed=1, max_position_embeddings=256)
    # The scheme's data preparation (AttentionPO: the judge, on the unwrapped reference, in memory) before training.
    raw = prepare_raw(args, "reference (in memory)", tokenizer, datasets.Dataset.from_list(standard_rows(12)),
                      "train", model=reference)
    dataset, _ = tokenize_preference_dataset(raw, tokenizer, max_length=None)
    policy = make_model(len(tokenizer), seed=0, max_position_embeddings=256)
    uses_reference = scheme_class(weighting).uses_reference  # SimPO, ConfPO: no reference model at all
    trainer = TokenweightTrainer(policy, reference if uses_reference else None, args, train_dataset=dataset,
                                 processing_class=tokenizer)
    recorder = RowRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()

    out.mkdir(parents=True, exist_ok=True)
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    model = trainer.accelerator.unwrap_model(trainer.model)
    (out / f"rows_rank{rank}.json").write_text(json.dumps({
        "world_size": world, "rows": recorder.rows, "distributed_type": str(trainer.accelerator.distributed_type),
        "policy": sharding(model), "reference": sharding(trainer.ref_model)}))
    # FSDP: gathering a parameter's full tensor is a collective, so every process does it.
    params = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
              for name, p in model.named_parameters()}
    if trainer.accelerator.is_main_process:
        torch.save(params, out / "params.pt")
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: freeing the DDP reducer joins gloo's worker threads while holding the GIL, and a
    # worker still releasing a finished collective's tensor needs the GIL (a PyTorch teardown race that hangs about
    # one run in ten). Everything this worker produces is written above.
    sys.stdout.flush()
    os._exit(0)
