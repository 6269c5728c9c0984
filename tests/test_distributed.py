"""Data parallelism and FSDP are the Trainer's and work with our patched forward and the schemes' own passes: 2 CPU
processes over gloo with per-device batch 2 train to the same parameters as 1 process with batch 2 and
``gradient_accumulation_steps=2``, under DDP (``accelerate launch --multi_gpu``) and under FSDP2 (the shipped
``accelerate_configs/fsdp.yaml``; accelerate enables FSDP only for accelerators, tokenweight switches a CPU state
to it, see ``tokenweight.fsdp``).

With the sequential sampler, step ``k`` of the 2-process run gives micro-batch ``2k`` to rank 0 and ``2k+1`` to
rank 1 (accelerate shards batches round-robin); the single process sees micro-batches ``2k`` and ``2k+1`` in the
same step. DDP averages the two gradients, FSDP reduce-scatters their mean; gradient accumulation sums the two
losses divided by 2. All then clip and step identically. The logged metrics agree too: means are averaged and counts
(``num_tokens``) summed over the two processes exactly as over the two micro-steps.

Tolerances: FSDP2 all-gathers parameters exactly and reduce-scatters gradients in a different summation order than
one process's accumulation, so agreement is not guaranteed bitwise: the maximum parameter difference after 3 steps
must stay below 1e-6 (measured: 0.0 on CPU for every scheme here). DDP keeps its 1e-5 bound.

TI-DPO runs with its triplet term (``tidpo_gamma 0.1``): anchors are seeded per dataset row and step, and
``generate`` on an FSDP2 policy keeps the processes' forwards in step (transformers sets ``synced_gpus`` for
``fully_shard`` modules). AttentionPO's judge runs before training on the unwrapped reference.

Padding-free batches (rows packed, position ids restarting per row): each launch also trains the schemes of
:data:`PADDING_FREE_SCHEMES` with ``padding_free``, compared with the single process's padding-free run by the same
bounds, and its first step (same initial parameters: loss, gradient norm, metrics) with the single process's *padded*
run, which padding-free must equal (``tests/test_padding_free.py`` compares every scheme so in one process; later
steps are not compared across the two paths: AdamW turns round-off in near-zero gradients into visible updates).

One launch per mode trains every scheme in turn in the same processes (a launch costs more than the trainings).
accelerate's state is process-wide, so under FSDP the first scheme's trainer switches the CPU state to FSDP
(``tokenweight.fsdp.enable_fsdp_on_cpu``) and the later ones find it switched; each scheme's own models are still
checked to be ``fully_shard`` modules with every parameter split across the two processes. A failing scheme fails
the launch, and every test of that mode reports the launch's stderr.
"""

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
SIGTERM_WORKER = Path(__file__).with_name("sigterm_worker.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")
FSDP_CONFIG = Path(__file__).parents[1] / "src" / "tokenweight" / "accelerate_configs" / "fsdp.yaml"
TIDPO_GAMMA = "0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"


def launch(launcher_flags: list[str], out: Path, schemes: list[str]) -> Path:
    """The worker in 2 processes under ``accelerate launch`` with ``launcher_flags``, training ``schemes`` in turn
    into ``out/<scheme>``; returns ``out``."""
    run([str(ACCELERATE), "launch", *launcher_flags, "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         str(WORKER), str(out), "--weighting", ",".join(schemes), "--tidpo_gamma", TIDPO_GAMMA])
    return out


DDP_SCHEMES = ["uniform", "otpo", "tidpo"]
#: Every scheme that runs without user-trained models (``tisdpo``'s weights are dataset columns by training time,
#: the ``column`` path, which ``attention`` covers here); ``simpo`` and ``confpo`` train without any reference.
FSDP_SCHEMES = ["uniform", "otpo", "tidpo", "attention", "tdpo", "lddpo", "sampo", "d2po", "simpo", "confpo"]
#: Trained padding-free too, under DDP and FSDP2: the reference, hidden states (OTPO, TDPO's KL), TI-DPO's own passes
#: and triplet, cached weights, and no reference at all.
PADDING_FREE_SCHEMES = ["uniform", "otpo", "tidpo", "attention", "tdpo", "simpo"]


#: The logged metrics compared between runs (besides the loss and the gradient norm).
COMPARED_METRICS = ("rewards/chosen", "rewards/margins", "weights/mean", "logps/chosen")


def packed(schemes: list[str]) -> list[str]:
    return [f"{scheme}+padding_free" for scheme in schemes]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    """The 1-process runs with 2 accumulation steps of every scheme (one process, shared by DDP and FSDP)."""
    assert set(DDP_SCHEMES) <= set(FSDP_SCHEMES)  # the DDP tests compare against these runs too
    out = tmp_path_factory.mktemp("single")
    schemes = FSDP_SCHEMES + packed(PADDING_FREE_SCHEMES)
    run([sys.executable, str(WORKER), str(out), "--grad_accum", "2", "--weighting", ",".join(schemes),
         "--tidpo_gamma", TIDPO_GAMMA])
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    """One 2-process DDP launch training every scheme of :data:`DDP_SCHEMES`."""
    return launch(["--multi_gpu"], tmp_path_factory.mktemp("ddp"), DDP_SCHEMES + packed(PADDING_FREE_SCHEMES))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory) -> Path:
    """One 2-process FSDP2 launch (the shipped config) training every scheme of :data:`FSDP_SCHEMES`."""
    return launch(["--config_file", str(FSDP_CONFIG)], tmp_path_factory.mktemp("fsdp"),
                  FSDP_SCHEMES + packed(PADDING_FREE_SCHEMES))


@pytest.mark.parametrize("weighting", DDP_SCHEMES)
def test_two_process_ddp_equals_single_process_gradient_accumulation(ddp, single_process, weighting):
    ranks = assert_same_training(ddp / weighting, single_process / weighting, tolerance=1e-5)
    assert all(rank["distributed_type"] == "DistributedType.MULTI_CPU" for rank in ranks)


@pytest.mark.parametrize("weighting", PADDING_FREE_SCHEMES)
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_padding_free_equals_single_process_and_its_first_step_the_padded_one(
        request, single_process, mode, weighting):
    multi = request.getfixturevalue(mode) / f"{weighting}+padding_free"
    assert_same_training(multi, single_process / f"{weighting}+padding_free", tolerance=1e-5 if mode == "ddp" else 1e-6)
    first_packed, first_padded = (next(e for e in json.loads((d / "log_history.json").read_text()) if "loss" in e)
                                  for d in (multi, single_process / weighting))
    assert first_packed.keys() == first_padded.keys()
    for name in ("loss", "grad_norm", *COMPARED_METRICS):
        assert first_packed[name] == pytest.approx(first_padded[name], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("weighting", FSDP_SCHEMES)
def test_two_process_fsdp2_equals_single_process_with_a_sharded_reference(fsdp, single_process, weighting):
    from tokenweight.weights.base import scheme_class

    ranks = assert_same_training(fsdp / weighting, single_process / weighting, tolerance=1e-6)
    uses_reference = scheme_class(weighting).uses_reference
    for rank in ranks:  # really FSDP, not accelerate's DDP fallback
        assert rank["distributed_type"] == "DistributedType.FSDP"
        assert rank["policy"]["fsdp_module"]
        assert rank["reference"]["fsdp_module"] if uses_reference else rank["reference"] is None
    for model in ("policy", "reference") if uses_reference else ("policy",):
        shards = [rank[model]["params"] for rank in ranks]
        assert shards[0].keys() == shards[1].keys() and len(shards[0]) > 0
        for name, (local, full) in shards[0].items():
            assert 0 < local < full, (model, name, local, full)  # every parameter is a shard ...
            assert local + shards[1][name][0] == full, (model, name)  # ... and the two shards are the whole


def assert_same_training(multi: Path, single: Path, tolerance: float) -> list[dict]:
    """The 2-process run in ``multi`` saw the single run's rows, logged the same metrics and trained the same
    parameters (maximum difference below ``tolerance``); returns the two ranks' reports."""
    ranks = [json.loads((multi / f"rows_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2  # really distributed
    accumulated = json.loads((single / "rows_rank0.json").read_text())["rows"]
    assert len(accumulated) == 6 and len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == 3
    for step in range(3):
        assert sorted(ranks[0]["rows"][step] + ranks[1]["rows"][step]) == sorted(
            accumulated[2 * step] + accumulated[2 * step + 1]), f"step {step} saw different rows"

    multi_params, single_params = torch.load(multi / "params.pt"), torch.load(single / "params.pt")
    initial = _initial_params()
    assert multi_params.keys() == single_params.keys() == initial.keys()
    moved = max((multi_params[n] - initial[n]).abs().max().item() for n in multi_params)
    assert moved > 1e-3  # training changed the weights
    difference = max((multi_params[n] - single_params[n]).abs().max().item() for n in multi_params)
    assert difference < tolerance, difference

    multi_logs, single_logs = ([e for e in json.loads((d / "log_history.json").read_text()) if "loss" in e]
                               for d in (multi, single))
    assert len(multi_logs) == len(single_logs) == 3
    for step, (a, b) in enumerate(zip(multi_logs, single_logs)):
        assert a["num_tokens"] == b["num_tokens"], step  # summed over processes as over micro-steps
        for name in COMPARED_METRICS:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6), (step, name)
        if "tidpo/triplet_loss" in b:  # the same anchors were drawn
            assert a["tidpo/triplet_loss"] == pytest.approx(b["tidpo/triplet_loss"], rel=1e-4), step
    assert multi_logs[-1]["num_tokens"] > multi_logs[0]["num_tokens"] > 0
    return ranks


def _initial_params() -> dict[str, torch.Tensor]:
    from conftest import make_model, make_tokenizer
    return dict(make_model(len(make_tokenizer()), seed=0).named_parameters())


def test_sigterm_to_one_process_stops_every_process_at_the_same_step_and_the_run_resumes(tmp_path):
    """Preemption under DDP: SIGTERM reaches rank 1 only, inside step 3; both processes finish step 3, save one
    complete checkpoint-3 together and exit with 143; the same command with ``--resume_from_checkpoint true``, in a
    new launch as a preempted job restarts, then trains steps 4 to 6 in both."""
    from conftest import make_model, make_tokenizer, standard_rows
    from tokenweight.checkpoints import checkpoint_problem

    tokenizer = make_tokenizer()
    make_model(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(24)))
    out = tmp_path / "run"
    flags = ["--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(data), "--output_dir", str(out),
             "--use_cpu", "true", "--per_device_train_batch_size", "2", "--max_steps", "6", "--save_strategy", "no",
             "--logging_steps", "1", "--report_to", "none"]
    for phase in ([], ["--resume"]):
        run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
             str(SIGTERM_WORKER), str(tmp_path), *phase, *flags])
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [{"stopped": 143}] * 2
    assert [json.loads((tmp_path / f"rank{r}-resumed.json").read_text()) for r in (0, 1)] == [{"resumed": 0}] * 2
    assert checkpoint_problem(out / "checkpoint-3") is None
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
