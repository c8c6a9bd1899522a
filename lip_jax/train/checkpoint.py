"""orbax checkpoints of the train state: async, atomic, keep N, newest restorable first.

Every decision here is the same on every process: orbax decides time-based saves on the
primary process and broadcasts them; a state is checked finite by a replicated reduction.
"""

import logging

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

log = logging.getLogger("lip_jax")


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def same_on_every_process(value: int, what: str) -> int:
    """`value`, after checking that every process holds the same; else RuntimeError on all
    of them (a directory that reads differently on different hosts, e.g. a local path on
    hosts that do not share it, must not split the run or hang it in a collective)."""
    if jax.process_count() > 1:
        values = multihost_utils.process_allgather(np.int64(value)).tolist()
        if len(set(values)) > 1:
            raise RuntimeError(f"the processes disagree on {what}: {values} by process; "
                               "their views of the work directory differ")
    return value


def exists_on_every_process(directory) -> bool:
    """Whether `directory` exists, checked to read the same on every process."""
    return bool(same_on_every_process(int(epath.Path(directory).exists()),
                                      f"whether {directory} exists (1: yes)"))


class Checkpoints:
    """Checkpoints under `directory`, one per saved step (the data position is the step)."""

    def __init__(self, directory, keep: int | None = None, every_secs: float | None = None):
        """`directory`: a local path or a cloud URL such as gs://bucket/run/checkpoints.
        `keep` checkpoints are kept when training; `keep=None` opens them read-only (eval),
        creating nothing. `every_secs`: the least time between two `should_save` steps."""
        directory = epath.Path(directory)
        if "://" not in str(directory):
            directory = directory.resolve()
        self.writable = keep is not None
        policy = None
        if every_secs is not None:
            policy = ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
                minimum_interval_secs=every_secs)
        self.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, save_decision_policy=policy,
            create=self.writable, read_only=not self.writable,
            cleanup_tmp_directories=self.writable))  # left by saves that were killed

    def should_save(self, step: int) -> bool:
        """Whether `every_secs` have passed since the last save and none is in flight: decided
        on process 0 and broadcast by orbax, so every process agrees. Call it on every
        process at every step."""
        return self.manager.should_save(step)

    def save(self, state) -> None:
        """Saves `state` in the background; raises FloatingPointError, saving nothing, if it
        holds a non-finite value."""
        step = int(jax.device_get(state.step))
        if not jax.device_get(_all_finite(state)):
            raise FloatingPointError(f"the state after step {step} holds non-finite values: "
                                     f"not saved; {self.intact()}")
        self.manager.save(step, args=ocp.args.StandardSave(
            flax.serialization.to_state_dict(state)), force=True)

    def intact(self) -> str:
        """Names the newest checkpoint (all saved states are finite), after pending saves."""
        self.wait()
        step = self.manager.latest_step()
        if step is None:
            return "no checkpoint has been saved"
        return f"the newest checkpoint (step {step}) in {self.manager.directory} is intact"

    def restore_latest(self, abstract_state):
        """The newest checkpoint that restores, laid out like `abstract_state` (shapes,
        dtypes, shardings), or None if there is none. Newer checkpoints that fail to restore
        while an older one restores are corrupt: when writable, they are set aside as
        `<step>.corrupt-<n>` (never deleted) so that training saves those steps again. If
        every one fails (a corrupt directory or another model), raises RuntimeError."""
        target = flax.serialization.to_state_dict(abstract_state)
        failed, restored_step, state = [], None, None
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as error:  # corrupt, truncated or mismatched files
                log.warning("checkpoint at step %d does not restore (%s); trying an older one",
                            step, error)
                failed.append((step, error))
                continue
            restored_step = step
            state = flax.serialization.from_state_dict(abstract_state, restored)
            break
        same_on_every_process(-1 if restored_step is None else restored_step,
                              f"the step restored from {self.manager.directory} (-1: none)")
        if restored_step is not None:
            if failed and self.writable:
                self._set_aside([s for s, _ in failed])
            return state
        if failed:
            raise RuntimeError(f"no checkpoint in {self.manager.directory} restores:\n  "
                               + "\n  ".join(f"step {s}: {e}" for s, e in failed))
        return None

    def _set_aside(self, steps) -> None:
        directory = epath.Path(self.manager.directory)
        if jax.process_index() == 0:
            for step in steps:
                n = 1
                while (directory / f"{step}.corrupt-{n}").exists():
                    n += 1
                aside = (directory / str(step)).rename(directory / f"{step}.corrupt-{n}")
                log.warning("set the corrupt checkpoint aside as %s", aside)
        multihost_utils.sync_global_devices("lip_jax: corrupt checkpoints set aside")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
