"""SIGTERM (what Slurm and Kubernetes send before preempting a job) stops a run at a step boundary with a checkpoint.

:class:`StopOnSigterm` is a ``TrainerCallback``: the signal handler only sets a flag; at the end of the next optimizer
step every process learns whether any of them was signalled (one all-reduce of a flag, under a multi-process
launch), and then all of them save a checkpoint of that step and leave the training loop together.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import torch
from transformers import TrainerCallback

#: Exit status of a run stopped by SIGTERM (128 + the signal's number, as a shell reports it).
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


class StopOnSigterm(TrainerCallback):
    """Stop at the next step boundary once SIGTERM was received by any process; ``stopped`` tells the caller.

    ``anyone(flag) -> bool`` is True when ``flag`` is True on any process (:func:`any_process`)."""

    def __init__(self, anyone: Callable[[bool], bool]):
        self.anyone = anyone
        self.received = False
        self.stopped = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """SIGTERM sets the flag while the block runs (the previous handler comes back after it). Outside the main
        thread, where Python cannot install signal handlers, SIGTERM keeps its handler."""
        def handler(signum, frame):
            self.received = True

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.anyone(self.received):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True


def any_process(accelerator) -> Callable[[bool], bool]:
    """``flag -> bool``: ``flag`` of this process, or'ed over every process of ``accelerator``'s launch."""
    if accelerator.num_processes == 1:
        return bool

    def anyone(flag: bool) -> bool:
        total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
        return bool(total.item() > 0)

    return anyone
