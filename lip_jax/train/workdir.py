"""A work directory's guards: one trainer at a time, and checkpoints of the right model."""

import contextlib
import fcntl
import json
import os
import socket

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

# The fields that decide the checkpoint's tree; a mismatch is named before orbax is asked.
IDENTITY = ("model", "model_kwargs", "dataset")


def check_matches(config, workdir) -> None:
    """Raises ValueError in one line if `workdir/config.json` names another model, model
    arguments or dataset than `config`; does nothing where there is no config.json."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return
    written = json.loads(path.read_text())
    ours = json.loads(config.to_json())
    if any(written.get(k) != ours.get(k) for k in IDENTITY):
        describe = lambda c: (f"model {c.get('model')} {c.get('model_kwargs') or ''} on "
                              f"{c.get('dataset')}").replace("  ", " ")
        raise ValueError(f"checkpoint in {workdir} was written by {describe(written)} "
                         f"({path}), not {describe(ours)}")


@contextlib.contextmanager
def exclusive(workdir):
    """Creates `workdir` and holds `workdir/lock` (process 0) while the block runs, so that
    a second trainer on the same directory fails with an error instead of overwriting its
    checkpoints. The OS drops the lock when the holder dies. Every process agrees on the
    outcome (broadcast from process 0). Cloud URLs are not locked."""
    workdir = epath.Path(workdir)
    handle, holder = None, ""
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        if "://" not in str(workdir):
            handle = open(workdir / "lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                handle = None
            else:
                handle.truncate(0)
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                handle.flush()
    held = np.int32(not holder)
    if jax.process_count() > 1:
        held = multihost_utils.broadcast_one_to_all(held)
    if not held:
        by = f"{holder}, " if holder else ""
        raise RuntimeError(f"{workdir} is in use by another trainer ({by}lock "
                           f"{workdir / 'lock'}): wait for it to end or use another --workdir")
    try:
        yield workdir
    finally:
        if handle is not None:
            handle.close()
