"""One retry budget per trial: Tune re-runs a trial whose actor died, not one whose Train run gave up.

Each trial is a Tune function that runs one ``TorchTrainer`` (``sweeps.stage2.make_trial_function``), and both
levels retry with the sweep's ``failure.max_failures`` (m):

- Train restarts the trial's workers up to m times (a worker or its node died, or the loop raised), each time
  from the last checkpoint; then ``fit()`` raises ``TrainingFailedError``: Train gave up.
- Tune re-runs the trial function up to m times. It has to for one failure: when the node that hosts the trial's
  Tune actor dies, the Train controller pinned beside it dies too, and only Tune can start the trial again
  (RELIABILITY.md, "What the fault tests found", 1).

Left at that, a trial that fails for real (out of memory at its sampled setting, say) is attempted (m+1)^2
times: every Tune re-run starts a Train run with m fresh restarts. So when Train gives up, the trial function
leaves a marker beside the Train run (``<run name>.gave-up-<session>``), and Tune's re-runs in the same driver
session fail at once, naming the first failure. The marker is keyed by the driver's session, so a new driver
(``--resume``, whose Tune ``resume_errored`` re-runs errored trials) gives the trial its full budget again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pyarrow.fs

from common.paths import open_location


class TrainRunGaveUp(RuntimeError):
    """A Tune re-run of a trial whose Train run already gave up in this driver session."""


def new_session() -> str:
    """A key for this driver run (one per ``run_sweep``; ``--resume`` starts a new one)."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class GiveUpMarker:
    """The marker of one Train run (``storage``/``run_name``) in one driver ``session``."""

    storage: str  # where the sweep's Train runs live: a local folder or a pyarrow URI
    run_name: str
    session: str

    def _location(self) -> tuple[pyarrow.fs.FileSystem, str]:
        fs, root = open_location(self.storage)
        return fs, f"{root}/{self.run_name}.gave-up-{self.session}"

    def record(self, error: BaseException) -> None:
        """Note that the Train run gave up with ``error`` (its last line is kept as the reason)."""
        fs, path = self._location()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        with fs.open_output_stream(path) as stream:
            stream.write(f"{type(error).__name__}: {reason}".encode())

    def raise_if_recorded(self) -> None:
        """Raise :class:`TrainRunGaveUp` if this Train run gave up earlier in this driver session."""
        fs, path = self._location()
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return
        with fs.open_input_stream(path) as stream:
            reason = stream.read().decode(errors="replace")
        raise TrainRunGaveUp(f"Train run {self.run_name} gave up earlier in this sweep run, so it is not started "
                             f"again (fix the cause, then run the sweep with --resume to retry it): {reason}")
