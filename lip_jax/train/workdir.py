"""A work directory's guards: one trainer at a time, one directory seen by every process,
checkpoints of the right model, and config.json as the record of what the run computes."""

import fcntl
import json
import logging
import os
import socket
import uuid

import jax
from etils import epath

from lip_jax.train import cluster
from lip_jax.train.config import (CHANGES, DATA, DEFAULTS, KIND, RECORDED, as_json,
                                  read_record, record)

log = logging.getLogger("lip_jax")

# The fields that decide the checkpoint's tree; a mismatch is named before orbax is asked.
IDENTITY = ("model", "model_kwargs", "dataset")


def check_matches(config, workdir) -> None:
    """Raises ValueError in one line if `workdir/config.json` names another model, model
    arguments or dataset than `config`; does nothing where there is no config.json."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return
    written, ours = read_record(path), as_json(config)
    if any(written.get(k, _default(k)) != ours[k] for k in IDENTITY):
        describe = lambda c: (f"model {c.get('model')} {c.get('model_kwargs') or ''} on "
                              f"{c.get('dataset')}").replace("  ", " ")
        raise ValueError(f"checkpoint in {workdir} was written by {describe(written)} "
                         f"({path}), not {describe(ours)}")


def _default(name):
    return json.loads(json.dumps(DEFAULTS[name]))


def check_record(config, workdir, step: int, allow_change: bool, data: dict) -> list[dict]:
    """The changes list for `workdir/config.json`: its recorded changes, plus one entry
    `{step, field, old, new}` per recorded field that `config` changes, and one for the
    `data` read (its size and fingerprint: `Trainer.data_record()`) if it differs from the
    recorded. A change of a field of kind "math", or of the data, changes what the run
    computes: it raises ValueError naming each as `field: old -> new`, unless
    `allow_change`. No config.json: no changes, but a resume (`step` > 0) without one
    cannot be checked and is refused unless `allow_change`."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        if step and not allow_change:
            raise ValueError(f"{workdir} holds checkpoints (step {step}) but not config.json, "
                             "the run's record: nothing shows that this config continues "
                             "the run; pass --allow-config-change to resume with it (then "
                             "recorded), or use another --workdir")
        return []
    written, ours = read_record(path), as_json(config)
    new = [dict(step=step, field=k, old=written.get(k, _default(k)), new=ours[k])
           for k in RECORDED if written.get(k, _default(k)) != ours[k]]
    if written.get(DATA, data) != data:  # recorded since lip_jax records the data
        new.append(dict(step=step, field=DATA, old=written[DATA], new=data))
    refused = [c for c in new if c["field"] == DATA or KIND[c["field"]] == "math"]
    if refused and not allow_change:
        raise ValueError(
            f"{path} records this run with other values of fields that change what it "
            "computes: " + ", ".join(f"{c['field']}: {json.dumps(c['old'])} -> "
                                     f"{json.dumps(c['new'])}" for c in refused)
            + "; resume with the recorded values, use another --workdir, or pass "
            "--allow-config-change to continue with the new ones (recorded in config.json)")
    for c in new:
        log.info("config.%s: %s -> %s at step %d (recorded in %s)", c["field"],
                 json.dumps(c["old"]), json.dumps(c["new"]), step, path)
    return written.get(CHANGES, []) + new


def write_record(config, workdir, changes: list[dict], data: dict) -> None:
    """Writes `workdir/config.json` whole (process 0)."""
    if jax.process_index() == 0:
        partial = epath.Path(workdir) / "config.json.tmp"
        partial.write_text(record(config, changes, data))
        partial.replace(epath.Path(workdir) / "config.json")


class Claim:
    """`workdir` held by this trainer (the `with` block): created if missing (process 0),
    locked (`workdir/lock`, process 0's `flock`; the OS drops it when the holder dies; cloud
    URLs are not locked), and checked to be one directory for every process: process 0
    writes a token into the lock file that each process must read back (hosts that each
    use a local disk would otherwise train apart). If the block fails before `started()`,
    what it created is removed (the directory, and parents it made if they are empty): a
    failed command leaves no new directory. One that existed when it was claimed (another
    trainer's, even one made since this trainer checked) is never removed."""

    def __init__(self, workdir):
        self.workdir = epath.Path(workdir)
        self.created: list[epath.Path] = []  # by process 0, deepest first
        self.handle, self.begun = None, False

    def __enter__(self):
        try:
            self._lock()
            self._check_shared()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def started(self) -> None:
        """The run has begun: keep the directory whatever happens next."""
        self.begun = True

    def __exit__(self, error_type, error, traceback):
        if self.handle is not None:
            self.handle.close()
        if self.begun or not self.created:
            return
        self.created[0].rmtree()
        for parent in self.created[1:]:  # made for it: removed only while empty
            try:
                parent.rmdir()
            except OSError:
                break

    def _create(self) -> None:
        """Makes the work directory (process 0), noting what this made: a local directory
        is made atomically, so that of two trainers only one counts as its maker."""
        cloud = "://" in str(self.workdir)
        missing = []
        for path in [self.workdir] if cloud else [self.workdir, *self.workdir.parents]:
            if path.exists():
                break
            missing.append(path)
        try:
            self.workdir.mkdir(parents=True, exist_ok=cloud)
            self.created = missing
        except FileExistsError:
            pass
        except OSError as error:
            raise OSError(f"cannot create work directory {self.workdir}: "
                          f"{error.strerror or error}") from None
        if not cloud and not self.workdir.is_dir():
            raise NotADirectoryError(f"work directory {self.workdir} exists but is not a "
                                     "directory (a file, or a link to nothing)")

    def _lock(self) -> None:
        holder, token = "", uuid.uuid4().hex
        if jax.process_index() == 0:
            self._create()
            path = self.workdir / "lock"
            if "://" in str(self.workdir):
                path.write_text(f"token {token}\n")
            else:
                self.handle = open(path, "a+")
                try:
                    fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self.handle.seek(0)
                    holder = self.handle.read().split(", token")[0].strip() or "another process"
                    self.handle.close()
                    self.handle = None
                else:
                    self.handle.truncate(0)
                    self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}, "
                                      f"token {token}\n")
                    self.handle.flush()
        holder, self.token = cluster.exchange("the work directory lock", [holder, token])[0]
        if holder:
            self.created = []  # not ours to remove
            raise BlockingIOError(f"{self.workdir} is in use by another trainer ({holder}, "
                                  f"lock {self.workdir / 'lock'}): wait for it to end or use "
                                  "another --workdir")

    def _check_shared(self) -> None:
        path = self.workdir / "lock"
        sees = path.exists() and f"token {self.token}" in path.read_text()
        blind = [p for p, ok in enumerate(cluster.exchange("the work directory", sees))
                 if not ok]
        if blind:
            raise ValueError(f"process{'es' * (len(blind) > 1)} "
                             f"{', '.join(map(str, blind))} do not see {path} that process 0 "
                             f"wrote: every process must use the same work directory (one "
                             "shared file system or a gs:// URL), not a disk of its own")
