"""``tokenweight train ARGS`` under ``accelerate launch`` whose rank 1 alone receives SIGTERM inside step 3, then the
same command resumed with ``--resume_from_checkpoint true`` in the same processes, for ``tests/test_distributed.py``.

Each rank writes ``OUT/rank{r}.json``: the exit status of the interrupted run and of the resumed one. As a script:
``python tests/sigterm_worker.py OUT ARGS…``.
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
    rank = int(os.environ["RANK"])
    compute_loss = TokenweightTrainer.compute_loss
    sent = []

    def signalling_compute_loss(self, model, inputs, *args, **kwargs):
        if rank == 1 and model.training and self.state.global_step == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # only this process is signalled
        return compute_loss(self, model, inputs, *args, **kwargs)

    TokenweightTrainer.compute_loss = signalling_compute_loss
    stopped = exit_status(["train", *argv])
    TokenweightTrainer.compute_loss = compute_loss
    resumed = exit_status(["train", *argv, "--resume_from_checkpoint", "true"])
    (out / f"rank{rank}.json").write_text(json.dumps({"stopped": stopped, "resumed": resumed}))


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2:])
