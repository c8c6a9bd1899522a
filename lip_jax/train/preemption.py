"""Stopping on SIGTERM (preemption) or SIGINT (Ctrl-C) at a step every process agrees on.

Across processes (`jax.distributed`), JAX's preemption service catches SIGTERM on any
process, tells the others, and `reached_preemption_sync_point(step)` is True on all of
them at the same step; SIGINT is passed on to it as a SIGTERM. On a single process a
flag set by the signal handler decides.
"""

import logging
import os
import signal

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("lip_jax")

EXIT_STATUS = os.EX_TEMPFAIL  # 75: "temporary failure, retry": schedulers rerun the job


class Preempted(SystemExit):
    """A run stopped by a signal after saving its checkpoint at `step`; uncaught, the
    program exits with status 75 so that a scheduler retries it (the run resumes)."""

    def __init__(self, step: int):
        super().__init__(EXIT_STATUS)
        self.step = step


class StopSignals:
    """While active, SIGTERM and SIGINT ask the loop to save and stop; `reached(step)`,
    called by every process at every step, says when (the same step on all)."""

    def __init__(self):
        self.distributed = jax.distributed.is_initialized()
        self.received = None
        # Across processes JAX's own SIGTERM handler must stay in place.
        names = ("SIGINT",) if self.distributed else ("SIGTERM", "SIGINT")
        self.previous = {name: signal.signal(getattr(signal, name), self._handle)
                         for name in names}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint and stopping (%s again to stop at once)",
                    name, name)
        self.received = name
        signal.signal(signum, self.previous[name])  # a second signal acts at once
        if self.distributed:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service

    def reached(self, step: int) -> bool:
        if self.distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def restore(self) -> None:
        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
