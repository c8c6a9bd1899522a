"""Metrics: JSON lines in `workdir/metrics.jsonl`, TensorBoard where tensorboardX is
installed, and progress on the terminal (a bar when interactive, log lines otherwise)."""

import contextlib
import json
import logging
import sys
import time

from etils import epath

log = logging.getLogger("lip_jax")


class MetricsWriter:
    """Writes from process 0 only; `write(step, **scalars)` appends one JSON object."""

    def __init__(self, workdir, enabled: bool = True):
        self.enabled = enabled
        path = epath.Path(workdir) / "metrics.jsonl"
        if enabled and path.exists():
            text = path.read_text()
            if text and not text.endswith("\n"):  # a row cut off (a full disk): drop it
                path.write_text(text[:text.rfind("\n") + 1])
        self.file = path.open("a") if enabled else None
        self.tensorboard = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
            except ImportError:
                pass

    def write(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, float(value), step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def read_metrics(workdir) -> list[dict]:
    """The rows of `workdir/metrics.jsonl` ([] if there is none); a last row cut off
    (interrupted while written) is left out. Raises ValueError naming the line of any other
    row that is not a JSON object of numbers."""
    path = epath.Path(workdir) / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    lines = text.split("\n")[:-1]  # the text after the last newline was cut off
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            assert isinstance(row, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())
        except (ValueError, AssertionError):
            raise ValueError(f"{path} line {number} is not a metrics row (a JSON object of "
                             f"numbers): {line[:80]!r}") from None
        rows.append(row)
    return rows


def last_evaluation(workdir) -> dict:
    """The newest evaluation row of `workdir/metrics.jsonl` ({} if there is none)."""
    return next((row for row in reversed(read_metrics(workdir)) if "eval_top1" in row), {})


def wall_time(workdir) -> float:
    """The run's training time so far (`wall_time_s` of its newest row; 0 if none)."""
    return next((row["wall_time_s"] for row in reversed(read_metrics(workdir))
                 if "wall_time_s" in row), 0.0)


class Progress:
    """A tqdm bar with images/s and ETA on a terminal (log lines, the evaluation's included,
    are printed above it through `tqdm.write`); plain log lines elsewhere."""

    def __init__(self, start: int, total: int, batch_size: int, enabled: bool = True,
                 interactive: bool | None = None):
        self.batch_size, self.total, self.enabled = batch_size, total, enabled
        self.last_step, self.last_time = start, time.perf_counter()
        self.bar, self.context = None, contextlib.ExitStack()
        if enabled and (sys.stderr.isatty() if interactive is None else interactive):
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            self.context.enter_context(logging_redirect_tqdm())
            self.bar = self.context.enter_context(
                tqdm(total=total, initial=start, unit="step", dynamic_ncols=True))

    def update(self, step: int, **scalars) -> float:
        """Reports progress up to `step`; returns images/s since the last call."""
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        if not self.enabled:
            return rate
        text = ", ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"{text}, {rate:.0f} img/s")
        else:
            eta = (self.total - step) * self.batch_size / max(rate, 1e-9)
            log.info("step %d/%d: %s, %.0f img/s, ETA %.0f s", step, self.total, text, rate, eta)
        return rate

    def close(self) -> None:
        self.context.close()
