"""One run per output folder, and an overwrite that cannot destroy the previous run.

:func:`lock_output_dir` holds an exclusive ``flock`` on ``output_dir/.tokenweight.lock`` for the whole run; the
operating system releases it when the process ends in any way (a SIGKILLed run never blocks its own resume). The
file names its holder (pid and host), so a second run into the same folder is refused naming it.

:class:`SetAside` is ``--overwrite_output_dir``: the previous run's files are moved (renamed, same file system) into
``output_dir/.tokenweight-replaced`` only once the new run's model, data and settings are validated, deleted once the
new run has saved (a checkpoint or its final model), and put back by any failure before that. A run killed in
between leaves the folder behind; the next run in ``output_dir`` settles it (:func:`settle_set_aside`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from tokenweight.errors import UserError

LOCK_NAME = ".tokenweight.lock"
SET_ASIDE_NAME = ".tokenweight-replaced"
MOVING_NAME = ".tokenweight-replacing"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _writable_error(output_dir: str, error: OSError) -> UserError:
    return UserError(f"output_dir {output_dir} is not writable ({error.strerror or error}); nothing was trained")


@contextlib.contextmanager
def lock_output_dir(output_dir: str, is_main_process: bool = True, agree=None) -> Iterator[None]:
    """Hold the exclusive lock of ``output_dir`` (created if missing, and removed again if still empty at the end)
    while the block runs.

    Only the main process locks; ``agree(message or None) -> message or None`` (a broadcast from the main process
    under a multi-process launch) gives every process the main process's refusal, so all refuse together. A folder
    locked by a live run, or one that cannot be written, is a :class:`UserError`.
    """
    handle, message = None, None
    created = not Path(output_dir).exists()
    if is_main_process:
        try:
            handle = _acquire(Path(output_dir))
        except UserError as error:
            message = str(error)
    if agree is not None:
        message = agree(message)
    if message is not None:
        if handle is not None:
            _release(Path(output_dir), handle, created)
        raise UserError(message)
    try:
        yield
    finally:
        if handle is not None:
            _release(Path(output_dir), handle, created)


def _acquire(folder: Path) -> int:
    """The open, ``flock``-ed lock file of ``folder``, naming this process. A lock file replaced while it was
    opened (its holder ended and removed it) is opened again, so two runs never hold two different files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            path = folder / LOCK_NAME
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise UserError(f"output_dir {folder} is in use by another tokenweight run ({_holder(path)}); wait "
                                "for it to end or choose another --output_dir") from None
            try:
                same = os.stat(path).st_ino == os.fstat(handle).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(handle)
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return handle
    except OSError as error:
        raise _writable_error(str(folder), error) from None


def _release(folder: Path, handle: int, created: bool) -> None:
    with contextlib.suppress(OSError):
        (folder / LOCK_NAME).unlink()
    os.close(handle)
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a run refused before writing leaves no folder behind


def check_writable(output_dir: str) -> None:
    """Write and remove a probe file in ``output_dir``: a read-only folder (or a full disk) is a :class:`UserError`
    before any model loads, not at the first checkpoint."""
    probe = Path(output_dir, f".tokenweight-probe-{os.getpid()}")
    try:
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise _writable_error(output_dir, error) from None


class SetAside:
    """The previous run's ``names`` in ``output_dir`` (files and ``checkpoint-*`` folders), replaced safely: moved
    aside by :meth:`move` once the new run is validated, then :meth:`settle` d: deleted once the new run has saved,
    put back otherwise. Empty ``names`` (no overwrite, or not the main process): nothing to do."""

    def __init__(self, output_dir: str, names: list[str]):
        self.folder = Path(output_dir)
        self.names = names
        self.moved = False

    def move(self) -> None:
        if not self.names:
            return
        moving = self.folder / MOVING_NAME
        moving.mkdir()
        for name in self.names:
            os.replace(self.folder / name, moving / name)
        os.replace(moving, self.folder / SET_ASIDE_NAME)  # the move is complete only once this name exists
        self.moved = True

    def settle(self, new_run_saved: bool, name: str = SET_ASIDE_NAME) -> None:
        """Delete the old run (in ``output_dir/name``) when ``new_run_saved``, else put it back (what the new run
        wrote under the same names goes); says which on stderr."""
        if not self.moved:
            return
        self.moved = False
        aside = self.folder / name
        if new_run_saved:
            shutil.rmtree(aside)
            print(f"tokenweight: --overwrite_output_dir: the new run has saved; removed the previous run's "
                  f"{', '.join(self.names)} from {self.folder}", file=sys.stderr)
        else:
            _put_back(self.folder, aside)
            print(f"tokenweight: --overwrite_output_dir: the new run saved nothing; the previous run is back in "
                  f"{self.folder}", file=sys.stderr)


class DropReplacedOnSave(TrainerCallback):
    """Settle a :class:`SetAside` (delete the old run) at the new run's first checkpoint."""

    def __init__(self, replaced: SetAside):
        self.replaced = replaced

    def on_save(self, args, state, control, **kwargs):
        self.replaced.settle(new_run_saved=True)


def _put_back(folder: Path, aside: Path) -> None:
    for entry in aside.iterdir():
        target = folder / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    aside.rmdir()


def settle_set_aside(output_dir: str, new_run_saved: bool) -> None:
    """Finish an overwrite whose run was killed between moving the old run aside and settling it: the old run is
    deleted when the new run had saved (``new_run_saved``), put back otherwise (always when the move itself was
    cut short); says which on stderr."""
    for name, saved in ((MOVING_NAME, False), (SET_ASIDE_NAME, new_run_saved)):
        aside = Path(output_dir, name)
        if aside.is_dir():
            replaced = SetAside(output_dir, sorted(p.name for p in aside.iterdir()))
            replaced.moved = True
            replaced.settle(saved, name)


def is_disk_error(error: OSError) -> bool:
    """True for write failures the user fixes on the machine: a full disk or quota, a read-only file system, no
    permission."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
