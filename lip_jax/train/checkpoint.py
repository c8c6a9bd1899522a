"""orbax checkpoints of the train state: async, atomic, keep N, newest restorable first."""

import logging

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger("lip_jax")


class Checkpoints:
    """Checkpoints under `directory`, one per saved step (the data position is the step)."""

    def __init__(self, directory, keep: int):
        """`directory`: a local path or a cloud URL such as gs://bucket/run/checkpoints."""
        directory = epath.Path(directory)
        if "://" not in str(directory):
            directory = directory.resolve()
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                 enable_async_checkpointing=True))

    def save(self, state) -> None:
        step = int(jax.device_get(state.step))
        if step not in self.manager.all_steps():
            self.manager.save(step, args=ocp.args.StandardSave(
                flax.serialization.to_state_dict(state)))

    def restore_latest(self, abstract_state):
        """The newest checkpoint that restores, laid out like `abstract_state` (shapes,
        dtypes, shardings), or None if there is none. A checkpoint that fails to restore
        is skipped with a warning; if every one fails, raises RuntimeError."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        target = flax.serialization.to_state_dict(abstract_state)
        errors = []
        for step in steps:
            try:
                restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as error:  # corrupt, truncated or mismatched files
                log.warning("checkpoint at step %d does not restore (%s); trying an older one",
                            step, error)
                errors.append(f"step {step}: {error}")
                continue
            return flax.serialization.from_state_dict(abstract_state, restored)
        if errors:
            raise RuntimeError(f"no checkpoint in {self.manager.directory} restores:\n  "
                               + "\n  ".join(errors))
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
