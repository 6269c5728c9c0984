"""Run ``tokenweight train ARGS`` and hang inside the training step after ``STEP`` updates.

When the loss of step ``STEP + 1`` is about to be computed (so ``checkpoint-STEP`` is complete when
``--save_steps`` divides ``STEP``), the file ``MARKER`` is created and the process sleeps until the file
``MARKER.go`` exists, so a test can SIGKILL, SIGINT or SIGTERM a real CLI run at a known point (and let it go on). As a script: ``python tests/train_driver.py STEP MARKER ARGS…``.
"""

import signal
import sys
import time
from pathlib import Path

from tokenweight.cli import main
from tokenweight.trainer import TokenweightTrainer


def train_hanging(stop_step: int, marker: Path, argv: list[str]) -> int:
    """``tokenweight train argv`` with the hang installed; returns the exit status if the run ends."""
    compute_loss = TokenweightTrainer.compute_loss

    def hanging_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and self.state.global_step == stop_step:
            Path(marker).touch()
            while not Path(f"{marker}.go").exists():
                time.sleep(0.05)
        return compute_loss(self, model, inputs, *args, **kwargs)

    TokenweightTrainer.compute_loss = hanging_compute_loss
    try:
        return main(["train", *argv])
    finally:
        TokenweightTrainer.compute_loss = compute_loss


def train_with_slow_saves(save_marker: Path, argv: list[str]) -> None:
    """``tokenweight train argv`` whose checkpoint saves are announced (``SAVE_MARKER-<step>`` is created when the
    save of that step begins) and stretched (a pause before every ``torch.save``), so that a test can SIGKILL it
    inside a checkpoint write; exits with the run's status (a fork target)."""
    import torch

    save, save_checkpoint = torch.save, TokenweightTrainer._save_checkpoint

    def slow_save(*args, **kwargs):
        time.sleep(0.05)
        return save(*args, **kwargs)

    def announced_save_checkpoint(self, *args, **kwargs):
        Path(f"{save_marker}-{self.state.global_step}").touch()
        return save_checkpoint(self, *args, **kwargs)

    torch.save, TokenweightTrainer._save_checkpoint = slow_save, announced_save_checkpoint
    sys.exit(main(["train", *argv]))


if __name__ == "__main__":
    # the test sends this process SIGINT, as a terminal's Ctrl-C would; a child inherits its parent's signal mask and
    # ignored signals (a suite started in the background hands SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler), so start from a terminal's state whatever ran in the test process before
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(train_hanging(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
