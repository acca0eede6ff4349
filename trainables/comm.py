"""Gradient communication under DDP: optional bf16 compression and an all-reduce meter.

Over Gloo (the Windows 2x RTX 3090 set-up: no NCCL) the fp32 all-reduce of SAM3's gradients costs more than
the compute step without accumulation (BENCHMARKS.md, "GPU reference" and "Gradient communication over
Gloo"). The levers this project offers, all :class:`~trainables.config.TrialConfig` settings:

- ``grad_compression="bf16"``: torch's own ``bf16_compress_hook`` (cast each 25 MiB bucket to bf16, divide
  by the world size, all-reduce, cast back): half the bytes; the averaged gradient carries bf16 rounding
  (8 significant bits). Every rank decompresses the same bf16 sum, so parameters stay bit-identical.
- ``grad_accum_steps=k``: one all-reduce per k batches (see :func:`trainables.trial.train_step`).
- ``freeze_text_encoder=True``: the language backbone (42% of the parameters) leaves the all-reduce, and
  its 14 prompt embeddings are cached (:mod:`trainables.prompt_cache`).

:class:`CommMeter` counts the buckets DDP all-reduces and times each one (launch to completion); the
benchmark (``bench/gloo_comm.py``) and the tests use it. Bucket times overlap the backward pass and each
other, so their sum bounds the communication time from above, not its exposed (critical-path) part.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

GradCompression = Literal["none", "bf16"]
CommHook = Callable[[dist.ProcessGroup | None, dist.GradBucket], torch.futures.Future[torch.Tensor]]

# torch's hooks: "none" is the reference all-reduce (same result as DDP's built-in one), used only when metered
HOOKS: dict[str, CommHook] = {"none": default_hooks.allreduce_hook, "bf16": default_hooks.bf16_compress_hook}


@dataclass
class CommMeter:
    """What DDP's gradient all-reduce did since the last :meth:`reset`.

    ``calls``: buckets all-reduced (one optimizer step reduces every bucket once); ``elements``: gradient
    elements in those buckets; ``seconds``: summed launch-to-completion time of the buckets.
    """

    calls: int = 0
    elements: int = 0
    seconds: float = 0.0
    bucket_seconds: list[float] = field(default_factory=list)

    def reset(self) -> None:
        """Start counting afresh (between steps, say)."""
        self.calls, self.elements, self.seconds = 0, 0, 0.0
        self.bucket_seconds.clear()


@dataclass
class _HookState:
    """What :func:`_delegating_hook` receives from DDP: torch's hook, its process group, an optional meter."""

    hook: CommHook
    process_group: dist.ProcessGroup | None
    meter: CommMeter | None


# No ``from __future__ import annotations`` in this module: DDP compares this signature's annotations
# with the real ``dist.GradBucket`` and ``Future[Tensor]`` objects.
def _delegating_hook(state: _HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Run torch's ``state.hook`` on ``bucket``; with a meter, record its size and launch-to-completion time."""
    meter = state.meter
    if meter is None:
        return state.hook(state.process_group, bucket)
    start = time.perf_counter()
    meter.calls += 1
    meter.elements += bucket.buffer().numel()

    def record(future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        elapsed = time.perf_counter() - start
        meter.seconds += elapsed
        meter.bucket_seconds.append(elapsed)
        return future.value()

    return state.hook(state.process_group, bucket).then(record)


def register_grad_compression(ddp: DistributedDataParallel, mode: GradCompression, *,
                              meter: CommMeter | None = None,
                              process_group: dist.ProcessGroup | None = None) -> None:
    """Register the gradient communication of ``mode`` on ``ddp`` (before its first forward; once only).

    Args:
        ddp: the wrapped model.
        mode: ``"none"`` keeps DDP's built-in fp32 all-reduce (no hook at all unless ``meter`` is given, then
            torch's equivalent ``allreduce_hook``); ``"bf16"`` runs torch's ``bf16_compress_hook``.
        meter: when given, every bucket's all-reduce is counted and timed into it.
        process_group: the group to reduce over; ``None`` is the default (world) group.

    torch's hooks always run through a small delegating hook: ``DistributedDataParallel.register_comm_hook``
    refuses a hook *named* ``bf16_compress_hook`` unless NCCL >= 2.10 is available, which a Windows build of
    torch never has, although the hook itself only calls ``dist.all_reduce`` on a bf16 tensor, which Gloo
    sums correctly.
    """
    if mode not in HOOKS:
        raise ValueError(f"grad_compression {mode!r} is not one of {sorted(HOOKS)}")
    if mode == "none" and meter is None:
        return
    ddp.register_comm_hook(_HookState(HOOKS[mode], process_group, meter), _delegating_hook)


def bf16_round_trip_bound(local_grads: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise bound on |bf16-compressed mean - exact mean| of ``local_grads`` (one tensor per rank).

    Each rank's gradient is rounded to bf16 (relative error <= 2^-9), divided by the world size in bf16
    (<= 2^-9 more; exact for 2 ranks) and the bf16 sum is rounded again (<= 2^-9 of the sum): together
    <= 1.5 * 2^-8 of the mean of absolute values; the bound returned is 2^-7 of it.
    """
    mean_abs = torch.stack([g.abs() for g in local_grads]).mean(dim=0)
    return mean_abs * 2.0**-7 + torch.finfo(torch.float32).tiny
