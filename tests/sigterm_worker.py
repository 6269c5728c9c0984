"""``tokenweight train ARGS`` under ``accelerate launch`` whose rank 1 alone receives SIGTERM inside step 3; with
``--resume`` first, the same command resumed with ``--resume_from_checkpoint true``, for ``tests/test_distributed.py``.

Each rank writes ``OUT/rank{r}.json`` (the interrupted run's exit status) or ``OUT/rank{r}-resumed.json``. As a
script: ``python tests/sigterm_worker.py OUT [--resume] ARGS…``. The resume runs in a fresh launch, as a preempted
job restarts: a second training in the same processes could hang at its end in torch's gloo teardown (the worker
thread of a process group freed with the first run's DDP reducer waits for the GIL the main thread holds).
"""

import json
import os
import signal
import sys
from pathlib import Path

from tokenweight.cli import main
from tokenweight.trainer import TokenweightTrainer


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def run(out: Path, argv: list[str]) -> None:
    """The signalled run, or with ``--resume`` first in ``argv`` the resumed one (a fresh launch, as a preempted job
    restarts in new processes)."""
    rank = int(os.environ["RANK"])
    if argv[0] == "--resume":
        resumed = exit_status(["train", *argv[1:], "--resume_from_checkpoint", "true"])
        (out / f"rank{rank}-resumed.json").write_text(json.dumps({"resumed": resumed}))
        return
    compute_loss = TokenweightTrainer.compute_loss
    sent = []

    def signalling_compute_loss(self, model, inputs, *args, **kwargs):
        if rank == 1 and model.training and self.state.global_step == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # only this process is signalled
        return compute_loss(self, model, inputs, *args, **kwargs)

    TokenweightTrainer.compute_loss = signalling_compute_loss
    stopped = exit_status(["train", *argv])
    (out / f"rank{rank}.json").write_text(json.dumps({"stopped": stopped}))


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2:])
