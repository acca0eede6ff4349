"""What a person watching a sweep sees, and where everything else goes (``sweeps/stage2.py``; ``-v`` keeps
Ray's own console instead).

By default a sweep's console shows the plan, one line per validation of each trial (step, val Dice, AP75,
seconds per step, time left), a progress line from each running trial between validations (rewritten in place
on a terminal; elsewhere at most one per trial every :data:`PLAIN_PROGRESS_S`), one line when a trial ends
(completed, stopped by ASHA at step N, diverged, failed: the first line of its error), each distinct Python
warning of the driver once, and the summary. Everything else goes to two files in the sweep's log folder
(:func:`log_folder`, named in the plan):

- :data:`WORKERS_LOG`: every line Ray's processes print (Train's reports, pycocotools, PyTorch's and sam3's
  warnings, tracebacks), in Ray's own ``(name pid=N)`` form;
- :data:`DRIVER_LOG`: the driver's Python logging (Ray, Tune, Train, Optuna, this project) and its warnings.

The levers are Ray's and Python's own: Tune's ``verbose=0``, a handler on Ray's worker-output dispatcher in
place of its console printer (:func:`sweeps.ray_compat.route_worker_output`), ``logging`` handlers and
``logging.captureWarnings``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from common.paths import is_uri
from trainables.progress import PROGRESS_TAG, format_duration

#: the log folder's name inside a local experiment folder
LOG_FOLDER = "logs"
WORKERS_LOG = "ray_workers.log"
DRIVER_LOG = "driver.log"
#: where the console is not a terminal, the shortest time between two progress lines of one trial
PLAIN_PROGRESS_S = 120.0


def log_folder(experiment_dir: str, name: str, journal: str) -> Path:
    """``<experiment_dir>/logs``; for an experiment on object storage, ``<name>-logs`` beside the Optuna
    ``journal`` (a local or NFS file for such a sweep)."""
    return Path(journal).parent / f"{name}-logs" if is_uri(experiment_dir) else Path(experiment_dir) / LOG_FOLDER


def supports_ansi(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that understands ANSI escapes (on Windows, once VT processing is
    switched on: Windows Terminal has it, a legacy console gets it here or stays plain)."""
    if not getattr(stream, "isatty", lambda: False)():
        return False
    if sys.platform != "win32":
        return True
    try:
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle, mode = kernel32.GetStdHandle(-11), ctypes.c_uint32()  # STD_OUTPUT_HANDLE
        return bool(kernel32.GetConsoleMode(handle, ctypes.byref(mode))
                    and kernel32.SetConsoleMode(handle, mode.value | 0x0004))  # ENABLE_VIRTUAL_TERMINAL_PROCESSING
    except (AttributeError, OSError):
        return False


def error_summary(error: object) -> str:
    """The line a person reads of a trial's error: the last non-empty line of its text (the exception itself,
    after Tune's "Failure # 1 (occurred at ...)" header and the traceback)."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


class Console:
    """The lines meant for a person, on one stream; on a terminal, the running trials' progress in one status
    line below them, rewritten in place. Thread-safe (Ray's log thread and Tune's loop both write)."""

    def __init__(self, stream: TextIO | None = None, plain_interval_s: float = PLAIN_PROGRESS_S) -> None:
        self.stream = stream or sys.stdout
        self.tty = supports_ansi(self.stream)
        self.plain_interval_s = plain_interval_s
        self.status: dict[str, str] = {}
        self.last_plain: dict[str, float] = {}
        self.ended: set[str] = set()  # trials whose late progress lines (Train runs on after a report) are dropped
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own (above the status line, on a terminal)."""
        with self.lock:
            self._clear_status()
            self.stream.write(text + "\n")
            self._draw_status()
            self.stream.flush()

    def progress(self, key: str, text: str) -> None:
        """Trial ``key``'s latest progress: into the status line on a terminal, else a throttled plain line."""
        with self.lock:
            if key in self.ended:
                return
            if self.tty:
                self.status[key] = text
                self._draw_status()
            elif time.monotonic() - self.last_plain.get(key, -math.inf) >= self.plain_interval_s:
                self.last_plain[key] = time.monotonic()
                self.stream.write(text + "\n")
            self.stream.flush()

    def forget(self, key: str) -> None:
        """Trial ``key`` ended: drop it from the status line, and its progress lines from now on."""
        with self.lock:
            self._clear_status()
            self.ended.add(key)
            self.status.pop(key, None)
            self._draw_status()
            self.stream.flush()

    def close(self) -> None:
        """The sweep is over: clear the status line (what follows starts on a clean line)."""
        with self.lock:
            self._clear_status()
            self.status.clear()
            self.stream.flush()

    def _clear_status(self) -> None:
        if self.tty and self.status:
            self.stream.write("\r\x1b[K")

    def _draw_status(self) -> None:
        if self.tty and self.status:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + " | ".join(self.status.values())[:width])


#: the driver's console (Tune's callbacks run in the driver process; a restored callback finds it here)
CONSOLE = Console()


def reset_console() -> None:
    """A new :data:`CONSOLE` on the current ``sys.stdout`` (each quiet sweep starts with one)."""
    global CONSOLE
    CONSOLE = Console()


def worker_line(line: str) -> tuple[str, str] | None:
    """``(trial key, text)`` of a worker's progress line (:class:`trainables.progress.ProgressPrinter`), else
    None."""
    if not line.startswith(PROGRESS_TAG):
        return None
    text = line[len(PROGRESS_TAG):].strip()
    return text.split(" ", 1)[0], text


class SweepProgress(Callback):
    """A Tune callback printing one line per validation and one per trial end on :data:`CONSOLE`.

    It keeps no handle (Tune pickles it with the experiment and restores it on ``--resume``), and its state
    (each trial's last step and best validation) is saved with the experiment's."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.previous_step: dict[str, int] = {}
        self.best: dict[str, tuple[float, int]] = {}

    def get_state(self) -> dict:
        return {"previous_step": dict(self.previous_step), "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.previous_step = dict(state.get("previous_step", {}))
        self.best = {key: tuple(value) for key, value in state.get("best", {}).items()}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("diverged") or "val_dice" not in result:
            return
        key, step = trial.trial_id, int(result.get("step", 0))
        if result["val_dice"] >= self.best.get(key, (-math.inf, 0))[0]:
            self.best[key] = (float(result["val_dice"]), step)
        if step <= self.previous_step.get(key, 0):  # a resumed trial reporting its resume checkpoint again
            CONSOLE.line(f"{time.strftime('%H:%M:%S')} {key} resumed at step {step}  val Dice "
                         f"{result['val_dice']:.3f}")
            return
        CONSOLE.line(format_validation(key, result, self.max_steps, self.previous_step.get(key, 0)))
        self.previous_step[key] = step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial.trial_id
        CONSOLE.forget(key)
        CONSOLE.line(format_end(key, trial.last_result or {}, self.max_steps, self.best.get(key)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        key = trial.trial_id
        CONSOLE.forget(key)
        step = (trial.last_result or {}).get("step")
        CONSOLE.line(f"{time.strftime('%H:%M:%S')} {key} failed{f' after step {step}' if step else ''}: "
                     f"{error_summary(trial.get_error())} (details: {trial.path}/error.txt)")


def format_validation(key: str, result: dict, max_steps: int, previous_step: int) -> str:
    """``<trial> step 150/400  val Dice 0.412  AP75 0.130  0.62 s/step  ~3 min left``: one validation. The time
    left is the remaining steps at this pace plus one validation like this one per ``step - previous_step``."""
    step = int(result.get("step", 0))
    line = (f"{time.strftime('%H:%M:%S')} {key} step {step}/{max_steps}  val Dice {result['val_dice']:.3f}  "
            f"AP75 {result.get('val_ap75', math.nan):.3f}")
    per_step = float(result.get("seconds_per_step", math.nan))
    if math.isnan(per_step):  # a loop that does not time its steps
        return line
    validations_left = math.ceil((max_steps - step) / max(step - previous_step, 1))
    left = (max_steps - step) * per_step + validations_left * float(result.get("val_seconds", 0.0))
    return line + f"  {per_step:.2f} s/step" + (f"  ~{format_duration(left)} left" if step < max_steps else "")


def format_end(key: str, last: dict, max_steps: int, best: tuple[float, int] | None) -> str:
    """One line for a trial that ended without an error: completed, stopped by ASHA, or diverged."""
    step = int(last.get("step", 0))
    best_text = f" (best val Dice {best[0]:.3f} at step {best[1]})" if best else ""
    if last.get("diverged"):
        return f"{time.strftime('%H:%M:%S')} {key} diverged at step {step}: non-finite loss{best_text}"
    if step >= max_steps:
        return f"{time.strftime('%H:%M:%S')} {key} completed {step} steps{best_text}"
    return f"{time.strftime('%H:%M:%S')} {key} stopped by ASHA at step {step}{best_text}"


#: the driver loggers whose warnings and errors a person should see (once each): Python warnings, this
#: project's own, and Tune's "no trial is running ... resources" warning of a sweep that waits forever
SHOWN_LOGGERS = ("py.warnings", "sweeps", "trainables", "common", "data_prep",
                 "ray.tune.execution.insufficient_resources_manager")


class OnceToConsole(logging.Handler):
    """Each distinct message's first line once on :data:`CONSOLE`, warnings and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message not in self.seen:
            self.seen.add(message)
            CONSOLE.line(f"{record.levelname.lower()} (shown once; all in the driver log): "
                         f"{message.splitlines()[0] if message else record.name}")


@contextlib.contextmanager
def driver_logs_to(folder: Path) -> Iterator[Path]:
    """Send the driver's Python logging and warnings to ``folder/DRIVER_LOG``; meanwhile Ray's and Optuna's own
    console handlers are silent (the trial lines and the summary say what failed), and :data:`SHOWN_LOGGERS`'
    warnings and errors reach the console once each (:class:`OnceToConsole`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DRIVER_LOG
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, once = logging.getLogger(), OnceToConsole()
    libraries = [logging.getLogger(name) for name in ("ray", "optuna")]  # they do not propagate to the root
    shown = [logging.getLogger(name) for name in SHOWN_LOGGERS]
    quieted = [(h, h.level) for lg in libraries for h in lg.handlers if isinstance(h, logging.StreamHandler)]
    root_level = root.level
    for logger in (root, *libraries):
        logger.addHandler(file_handler)
    root.setLevel(min(root_level or logging.WARNING, logging.INFO))
    for handler, _ in quieted:
        handler.setLevel(logging.CRITICAL + 1)
    for logger in shown:
        logger.addHandler(once)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        for logger in shown:
            logger.removeHandler(once)
        for handler, level in quieted:
            handler.setLevel(level)
        for logger in (root, *libraries):
            logger.removeHandler(file_handler)
        root.setLevel(root_level)
        file_handler.close()


class WorkerLog:
    """Ray's worker-output handler for a quiet sweep: every line to ``path`` in Ray's ``(name pid=N)`` form;
    progress lines also to :data:`CONSOLE`."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, data: dict) -> None:
        # Ray's log thread calls this: an exception would end the thread, and with it this log. A console that
        # cannot be written (a closed pipe) costs the console only.
        pid = data.get("pid")
        name = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({name} pid={pid}) " if pid not in ("raylet", "autoscaler") else f"({pid}) "
        with self.lock:
            for line in data.get("lines", []):
                try:
                    self.file.write(prefix + line + "\n")
                    progress = worker_line(line)
                    if progress is not None:
                        CONSOLE.progress(*progress)
                except Exception:  # noqa: BLE001, S112 (see above)
                    continue
            with contextlib.suppress(Exception):
                self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.close()


@contextlib.contextmanager
def workers_log_to(folder: Path) -> Iterator[Path]:
    """Send what Ray's processes print to ``folder/WORKERS_LOG`` (:class:`WorkerLog`) until the block ends;
    enter it after ``ray.init`` and leave it after ``ray.shutdown``, so that no late line reaches the console."""
    from sweeps import ray_compat

    folder.mkdir(parents=True, exist_ok=True)
    log = WorkerLog(folder / WORKERS_LOG)
    try:
        with ray_compat.route_worker_output(log):
            yield folder / WORKERS_LOG
    finally:
        log.close()
        CONSOLE.close()


@contextlib.contextmanager
def printed_to_log(logger: logging.Logger) -> Iterator[None]:
    """What the block prints (e.g. the synthetic dataset's instance table) goes to ``logger`` at INFO."""
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.info("%s", buffer.getvalue().rstrip())
