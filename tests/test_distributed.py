"""Data parallelism is the Trainer's and works with our patched forward: 2 CPU processes (DDP over gloo) with
per-device batch 2 train to the same parameters as 1 process with batch 2 and ``gradient_accumulation_steps=2``.

With the sequential sampler, step ``k`` of the 2-process run gives micro-batch ``2k`` to rank 0 and ``2k+1`` to
rank 1 (accelerate shards batches round-robin); the single process sees micro-batches ``2k`` and ``2k+1`` in the
same step. DDP averages the two gradients; gradient accumulation sums the two losses divided by 2. Both then clip
and step identically. The logged metrics agree too: means are averaged and counts (``num_tokens``) summed over the
two processes exactly as over the two micro-steps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("weighting", ["uniform", "otpo", "tidpo"])
def test_two_process_ddp_equals_single_process_gradient_accumulation(tmp_path, weighting):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         str(WORKER), str(ddp), "--weighting", weighting])
    run([sys.executable, str(WORKER), str(single), "--grad_accum", "2", "--weighting", weighting])

    rank0, rank1 = (json.loads((ddp / f"rows_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2  # really distributed
    accumulated = json.loads((single / "rows_rank0.json").read_text())["rows"]
    assert len(accumulated) == 6 and len(rank0["rows"]) == len(rank1["rows"]) == 3
    for step in range(3):
        assert sorted(rank0["rows"][step] + rank1["rows"][step]) == sorted(
            accumulated[2 * step] + accumulated[2 * step + 1]), f"step {step} saw different rows"

    ddp_params, single_params = torch.load(ddp / "params.pt"), torch.load(single / "params.pt")
    initial = _initial_params()
    assert ddp_params.keys() == single_params.keys()
    moved = max((ddp_params[n] - initial[n]).abs().max().item() for n in ddp_params)
    assert moved > 1e-3  # training changed the weights
    difference = max((ddp_params[n] - single_params[n]).abs().max().item() for n in ddp_params)
    assert difference < 1e-5, difference

    ddp_logs, single_logs = ([e for e in json.loads((d / "log_history.json").read_text()) if "loss" in e]
                             for d in (ddp, single))
    assert len(ddp_logs) == len(single_logs) == 3
    for step, (a, b) in enumerate(zip(ddp_logs, single_logs)):
        assert a["num_tokens"] == b["num_tokens"], step  # summed over processes as over micro-steps
        for name in ("rewards/chosen", "rewards/margins", "weights/mean", "logps/chosen"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6), (step, name)
    assert ddp_logs[-1]["num_tokens"] > ddp_logs[0]["num_tokens"] > 0


def _initial_params() -> dict[str, torch.Tensor]:
    from conftest import make_model, make_tokenizer
    return dict(make_model(len(make_tokenizer()), seed=0).named_parameters())
