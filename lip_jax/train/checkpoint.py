"""orbax checkpoints of the train state: async, atomic, keep N, checksummed, newest intact
first.

A checkpoint is `<directory>/<step>/` as orbax commits it (`_CHECKPOINT_METADATA` and the
item `default/`) plus `checksums.json`, written once the commit is done (before the next
save, or on `wait`). Reading tries the newest first: one whose bytes differ from its
checksums, or that does not restore while an older one does, is passed over; so is any
entry named like a step that is not a committed checkpoint (an empty `99/`, a step without
its item, a file), which would stop orbax from reading any other. When writable (the one
trainer of the work directory) they are set aside, renamed `<name>.stray-<n>` or
`<name>.corrupt-<n>` (never deleted), so that training saves those steps again. Every
decision is the same on every process: process 0 lists, checks and renames, the others
follow through the key-value store (`cluster`).
"""

import contextlib
import logging
import re

import flax.serialization
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from lip_jax import checksums, pretrained
from lip_jax.train import cluster

log = logging.getLogger("lip_jax")

ITEM = "default"  # orbax's name of a manager's single item
STEP_NAME = re.compile(r"0|[1-9][0-9]*")  # the names orbax reads as steps
RETRIES = 5  # listings when a step vanishes while it is read (a trainer keeping few)


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _committed(path: epath.Path) -> bool:
    return (path / "_CHECKPOINT_METADATA").is_file() and (path / ITEM).is_dir()


def _on_process_0(what: str, compute):
    """`compute()` on process 0 (JSON), given to every process."""
    value = compute() if jax.process_index() == 0 else None
    return cluster.exchange(what, value)[0]


class Checkpoints:
    """Checkpoints under `directory`, one per saved step (the data position is the step)."""

    def __init__(self, directory, keep: int | None = None, every_secs: float | None = None):
        """`directory`: a local path or a cloud URL such as gs://bucket/run/checkpoints.
        `keep` checkpoints are kept when training; `keep=None` opens them read-only (eval,
        init_from), creating and renaming nothing. `every_secs`: the least time between two
        `should_save` steps."""
        directory = epath.Path(directory)
        if "://" not in str(directory):
            directory = directory.resolve()
        self.directory, self.writable = directory, keep is not None
        self._keep, self._every_secs, self._manager = keep, every_secs, None
        self._unsealed = []  # saved steps whose checksums are not yet written
        if self.writable:
            strays = _on_process_0("checkpoint entries to set aside", lambda: [
                p.name for p in (directory.iterdir() if directory.is_dir() else [])
                if STEP_NAME.fullmatch(p.name) and not _committed(p)])
            self._set_aside(strays, "stray", "not a committed checkpoint")

    @property
    def manager(self) -> ocp.CheckpointManager:
        """orbax's manager, which saves; made at its first use, after any damaged
        checkpoint is set aside (it reads every checkpoint's metadata)."""
        if self._manager is None:
            policy = None
            if self._every_secs is not None:
                policy = ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
                    minimum_interval_secs=self._every_secs)
            self._manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._keep, enable_async_checkpointing=True,
                    save_decision_policy=policy, create=True,
                    cleanup_tmp_directories=True))  # left by saves that were killed
        return self._manager

    def steps(self) -> list[int]:
        """The committed checkpoints' steps, oldest first (as process 0 lists them)."""
        directory = self.directory
        return _on_process_0(f"the checkpoints in {directory}", lambda: sorted(
            int(p.name) for p in (directory.iterdir() if directory.is_dir() else [])
            if STEP_NAME.fullmatch(p.name) and _committed(p)))

    def should_save(self, step: int) -> bool:
        """Whether `every_secs` have passed since the last save and none is in flight: decided
        on process 0 and broadcast by orbax, so every process agrees. Call it on every
        process at every step."""
        return self.manager.should_save(step)

    def save(self, state) -> None:
        """Saves `state` in the background; raises FloatingPointError, saving nothing, if it
        holds a non-finite value, and OSError if writing fails (a full disk)."""
        step = int(jax.device_get(state.step))
        if not jax.device_get(_all_finite(state)):
            raise FloatingPointError(f"the state after step {step} holds non-finite values: "
                                     f"not saved; {self.intact()}")
        self.wait()
        try:
            self.manager.save(step, args=ocp.args.StandardSave(
                flax.serialization.to_state_dict(state)), force=True)
        except Exception as error:
            raise OSError(f"saving the checkpoint of step {step} in {self.directory} "
                          f"fails: {error}") from None
        self._unsealed.append(step)

    def wait(self) -> None:
        """Waits for the save in flight, then writes the checksums of what it committed."""
        if self._manager is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise OSError(f"saving a checkpoint in {self.directory} fails: {error}") from None
        if jax.process_index() == 0:
            for step in self._unsealed:
                if (self.directory / str(step)).is_dir():  # not yet removed (keep)
                    checksums.write(self.directory / str(step))
        self._unsealed = []

    def intact(self) -> str:
        """Names the newest checkpoint (all saved states are finite), after pending saves."""
        self.wait()
        steps = self.steps()
        if not steps:
            return "no checkpoint has been saved"
        return f"the newest checkpoint (step {steps[-1]}) in {self.directory} is intact"

    def restore_latest(self, abstract_state):
        """The newest checkpoint that is intact and restores, laid out like `abstract_state`
        (shapes, dtypes, shardings), or None if there is none."""
        target = flax.serialization.to_state_dict(abstract_state)

        def read(path):  # the handler: no barrier that a failing process would not reach
            restored = ocp.StandardCheckpointHandler().restore(
                path, args=ocp.args.StandardRestore(target))
            return flax.serialization.from_state_dict(abstract_state, restored)
        return self.newest(read)[1]

    def newest(self, read) -> tuple[int | None, object]:
        """`(step, read(path of its item))` for the newest checkpoint that matches its
        checksums and that `read` reads on every process; `(None, None)` if there is no
        checkpoint. The newer ones, damaged, are then set aside when writable. Raises
        ValueError listing every failure if none reads, setting nothing aside (so that a
        rerun does not start afresh beside them)."""
        failures, passed_over = {}, []
        for _ in range(RETRIES):
            steps = self.steps()
            vanished = False
            for step in reversed(steps):
                path = self.directory / str(step)
                problem = _on_process_0(f"checking step {step}", lambda: _damage(path))
                if problem:
                    log.warning("checkpoint at step %d is damaged (%s): trying an older one",
                                step, problem)
                    failures[step] = problem
                    passed_over.append(step)
                    continue
                try:
                    value, error = read(path / ITEM), None
                except Exception as e:  # truncated or mismatched files, another model
                    value, error = None, " ".join(str(e).split())[:300] or type(e).__name__
                errors = [e for e in cluster.exchange(f"reading step {step}", error) if e]
                if not errors:
                    for bad in passed_over:
                        self._set_aside([bad], "corrupt", failures[bad])
                    return step, value
                if not _on_process_0(f"step {step} exists", lambda: path.exists()):
                    vanished = True  # removed by the trainer that keeps few: list again
                    break
                log.warning("checkpoint at step %d does not restore (%s): trying an older one",
                            step, errors[0])
                failures[step] = f"does not restore: {errors[0]}"
                passed_over.append(step)
            if not vanished:
                break
        if failures:
            raise ValueError(f"no checkpoint in {self.directory} restores: " + "; ".join(
                f"step {s}: {e}" for s, e in sorted(failures.items(), reverse=True))
                + " (nothing was set aside: move them elsewhere to start this run afresh)")
        return None, None

    def read_variables(self) -> dict:
        """params and batch_stats of the newest intact checkpoint, as NumPy arrays."""
        step, variables = self.newest(pretrained.read_variables)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return variables

    def _set_aside(self, names, reason: str, why: str) -> None:
        """Renames entries `names` to `<name>.<reason>-<n>` (process 0) when writable."""
        if not names or not self.writable:
            return
        if jax.process_index() == 0:
            for name in names:
                if not (self.directory / str(name)).exists():
                    continue
                n = 1
                while (self.directory / f"{name}.{reason}-{n}").exists():
                    n += 1
                aside = (self.directory / str(name)).rename(
                    self.directory / f"{name}.{reason}-{n}")
                log.warning("set %s aside as %s: %s", name, aside, why)
        cluster.exchange("checkpoints set aside", None)  # the others wait for the renames
        if self._manager is not None:
            self._manager.reload()

    def close(self) -> None:
        """Waits for the save in flight (raising its error) and closes orbax's manager."""
        if self._manager is None:
            return
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):  # after a failed save it fails too
                self._manager.close()
            raise
        self._manager.close()


def _damage(path: epath.Path) -> str | None:
    """Why the checkpoint at `path` must not be read, or None (checksums match, or the
    checkpoint predates them or was stopped before writing them: then orbax decides)."""
    if not path.exists():
        return None  # removed meanwhile: reading it fails and the steps are listed again
    return checksums.mismatch(path) if checksums.written(path) else None
