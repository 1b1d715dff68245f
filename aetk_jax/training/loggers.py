"""Experiment logging: callbacks for ``fit`` that write every metric of every epoch.

``fit`` calls each callback as ``cb(epoch, variables, history)`` after every epoch, with
``history = {"epoch": [...], "train": {metric: [...]}, "val": {metric: [...]}}``. The loggers here
write the entries the epoch added, tagged ``"<split>/<metric>"`` (``train/loss``, ``train/kl``,
``val/loss``, …), with the epoch as the step:

* :class:`TensorBoard` writes TensorBoard event files (scalars) with the ``tensorboard`` package's
  own event writer; TensorFlow is not needed (``pip install "aetk_jax[tensorboard]"``).
* :class:`CSVLogger` writes the whole history as one CSV table (a row per epoch, a column per
  ``split/metric``), rewritten atomically after every epoch, so the file always equals
  ``history`` — after a resume (``fit(..., resume=True)`` restores the history from the
  checkpoint) and after a crash between two epochs.

Both write from process 0 only in a multi-process run (like checkpoints), and neither returns
``True`` (they never stop training). MLflow and Weights & Biases need no class: a four-line
callback does it (see the docs page "Experiment logging").
"""
from __future__ import annotations

import csv
import io
import os
import time
from typing import Any, Optional

import jax

__all__ = ["TensorBoard", "CSVLogger", "read_csv", "scalars", "new_scalars"]


def scalars(history: dict[str, Any]) -> dict[str, list[float]]:
    """Every metric of ``history`` as ``{"<split>/<metric>": [one value per epoch it was recorded]}``.

    Args:
        history: ``fit``'s history, ``{"epoch": [...], "train": {...}, "val": {...}}``.

    Returns:
        The train metrics first, then the validation ones, each in the order ``fit`` recorded them.
    """
    return {f"{split}/{name}": list(values)
            for split in ("train", "val") for name, values in history.get(split, {}).items()}


def new_scalars(history: dict[str, Any], seen: dict[str, int]) -> dict[str, float]:
    """The latest value of each metric whose list grew since ``seen`` (updated in place).

    A metric not in ``seen`` (the first call, e.g. after a resume) contributes its last value
    only: the earlier epochs were logged by the run that recorded them.

    Args:
        history: ``fit``'s history.
        seen: ``{"split/metric": number of values already logged}``; updated to the current lengths.

    Returns:
        ``{"split/metric": value}`` for this epoch.
    """
    out = {}
    for tag, values in scalars(history).items():
        if values and len(values) > seen.get(tag, 0):
            out[tag] = float(values[-1])
        seen[tag] = len(values)
    return out


class TensorBoard:
    """A ``fit`` callback writing every train/val metric of every epoch as TensorBoard scalars.

    ``aet.train.fit(..., callbacks=[aet.train.TensorBoard("runs/vae")])`` then
    ``tensorboard --logdir runs``. One event file per instance (created at the first epoch),
    flushed after every epoch; the step of each scalar is the epoch.

    Attributes:
        logdir: the directory of the event file (created if absent).
    """

    def __init__(self, logdir: str):
        """Check that the ``tensorboard`` package is installed; nothing is written yet.

        Args:
            logdir: the directory of the event file (created at the first epoch if absent).

        Raises:
            ImportError: when the ``tensorboard`` package is not installed (it names the extra).
        """
        self.logdir = os.fspath(logdir)
        self._writer = None
        self._seen: dict[str, int] = {}
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
        except ImportError as err:
            raise ImportError("aet.train.TensorBoard needs the `tensorboard` package: "
                              'pip install "aetk_jax[tensorboard]" (or pip install tensorboard)') from err

    def __call__(self, epoch: int, variables: Any, history: dict[str, Any]) -> None:
        """Write the scalars ``epoch`` added to ``history``.

        Args:
            epoch: the epoch just finished (the step of the scalars).
            variables: the model's variables (unused).
            history: ``fit``'s history so far.
        """
        values = new_scalars(history, self._seen)
        if jax.process_index() != 0 or not values:
            return
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if self._writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            self._writer = EventFileWriter(self.logdir)
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])
        self._writer.add_event(Event(wall_time=time.time(), step=int(epoch), summary=summary))
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later epoch opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class CSVLogger:
    """A ``fit`` callback keeping ``path`` equal to the history as a CSV table.

    Columns: ``epoch``, then ``train/<metric>`` and ``val/<metric>`` in the order ``fit``
    recorded them; one row per epoch. The file is rewritten after every epoch (to a temporary
    file, then renamed), so it never holds a half-written row and always matches ``history``,
    including the epochs restored by a resume. A metric recorded in fewer epochs than the others
    (e.g. one that first appeared late) fills the last rows and leaves the earlier cells empty.

    Attributes:
        path: the CSV file.
    """

    def __init__(self, path: str):
        """Remember the path; the file is written at the end of every epoch.

        Args:
            path: the CSV file (its directory is created if absent).
        """
        self.path = os.fspath(path)

    def __call__(self, epoch: int, variables: Any, history: dict[str, Any]) -> None:
        """Rewrite the table with every epoch of ``history``.

        Args:
            epoch: the epoch just finished (unused: the rows are ``history["epoch"]``).
            variables: the model's variables (unused).
            history: ``fit``'s history so far.
        """
        if jax.process_index() != 0:
            return
        self.write(history, self.path)

    @staticmethod
    def write(history: dict[str, Any], path: str) -> None:
        """Write ``history`` to ``path`` as a CSV table, atomically.

        Args:
            history: ``fit``'s history.
            path: the CSV file.
        """
        epochs, columns = list(history.get("epoch", [])), scalars(history)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["epoch", *columns])
        n = len(epochs)
        for i, ep in enumerate(epochs):
            row: list[Optional[Any]] = [ep]
            for values in columns.values():
                j = i - (n - len(values))  # right-aligned: a short list holds the last epochs
                row.append(repr(float(values[j])) if 0 <= j < len(values) else "")
            writer.writerow(row)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)


def read_csv(path: str) -> dict[str, list[float]]:
    """Read a :class:`CSVLogger` table back as ``{column: values}`` (empty cells dropped).

    Args:
        path: the CSV file.

    Returns:
        ``{"epoch": [...], "train/loss": [...], ...}`` with floats (``epoch`` as ints).
    """
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = rows[0].keys() if rows else []
    return {c: [int(r[c]) if c == "epoch" else float(r[c]) for r in rows if r[c] != ""] for c in cols}

