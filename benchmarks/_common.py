"""Shared by the benchmarks that compare two implementations, each measured in its own fresh Python process.

Memory method. CPU: the child records its resident set size ``RSS_before`` (``/proc/self/statm``) right before the
measured work, and reports ``ru_maxrss`` after it minus ``RSS_before`` — the peak memory the work added (an upper
bound if an earlier peak of the process was higher, which the warm-up keeps small). CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory allocated before.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys

MIB = 1024 ** 2


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.added_bytes``: peak memory added inside the block."""

    def __init__(self, device: str):
        self.device = device
        self.added_bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            self._before = rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            self.added_bytes = torch.cuda.max_memory_allocated() - self._before
        else:
            self.added_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._before  # KiB


def run_child(script: str, child_args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``python script --child ...`` in a fresh process (``env`` added to the environment); its last stdout
    line is a JSON object."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    result = subprocess.run([sys.executable, script, *child_args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"child {' '.join(child_args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def command_line() -> str:
    """The command that produced the current run, for the reports."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
