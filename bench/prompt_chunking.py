"""Step time and memory of prompt chunking (``category_chunk_size``) on the tiny preset.

One training step = forward + backward of every chunk of a batch (``--images`` synthetic images x 14
CASS prompts), gradients accumulated, no optimizer. For each chunk size, in a fresh process: seconds per
step (median of ``--steps`` after one warm-up step), the largest autograd-saved activation volume of any
one chunk (what chunking bounds: distinct storages packed by ``saved_tensors_hooks`` in a
chunk's forward, parameters included), and the process's peak RSS.
Run with OMP_NUM_THREADS=1 on an idle machine:

    TORCHDYNAMO_DISABLE=1 .venv/bin/python bench/prompt_chunking.py [--chunk-sizes 14 7 2] [--images 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch


def measure(chunk_size: int, images: int, steps: int, resolution: int, dataset_root: str) -> dict[str, float]:
    """Time ``steps`` training steps at ``chunk_size`` in this process; return the figures of the table."""
    from data_prep.layout import DatasetPaths
    from trainables.config import TrialConfig
    from trainables.data import CassDataset, iter_prompt_chunks
    from trainables.loss import build_loss, training_step_loss
    from trainables.model import build_model

    torch.set_num_threads(1)
    paths = DatasetPaths(Path(dataset_root))
    dataset = CassDataset(paths.train_json, paths.images_dir, resolution, train=True)
    start = time.perf_counter()
    datapoints = [dataset[i % len(dataset)] for i in range(images)]
    item_seconds = (time.perf_counter() - start) / images
    model = build_model("tiny", resolution, seed=0)
    loss_fn = build_loss(TrialConfig(), distributed=False)
    saved = {"storages": set(), "now": 0, "peak": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in saved["storages"]:  # a storage saved by several ops counts once
            saved["storages"].add(storage.data_ptr())
            saved["now"] += storage.nbytes()
            saved["peak"] = max(saved["peak"], saved["now"])
        return tensor

    times = []
    for step in range(steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for chunk, weight in iter_prompt_chunks(datapoints, chunk_size):
            saved["storages"], saved["now"] = set(), 0
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _ = training_step_loss(model, chunk, loss_fn)
            (loss * weight).backward()
        if step:
            times.append(time.perf_counter() - start)
    return {
        "chunk_size": chunk_size,
        "chunks": len(list(iter_prompt_chunks(datapoints, chunk_size))),
        "step_s": statistics.median(times),
        "saved_mb": saved["peak"] / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "item_s": item_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[14, 7, 2])
    parser.add_argument("--images", type=int, default=1, help="images per batch (each asks 14 prompts)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args(argv)

    from data_prep.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as root:
        generate_dataset(Path(root), n_train=max(4, args.images), n_val=1, size=args.resolution, seed=0)
        rows = []
        for chunk_size in args.chunk_sizes:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                rows.append(pool.submit(measure, chunk_size, args.images, args.steps, args.resolution,
                                        root).result())
    print(f"\ntiny preset, {args.resolution} px, {args.images} image(s) x 14 prompts per step, 1 thread")
    print(f"{'chunk size':>10} {'chunks':>6} {'s/step':>8} {'max saved activations MB':>25} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['chunk_size']:>10} {r['chunks']:>6} {r['step_s']:>8.3f} {r['saved_mb']:>25.1f} "
              f"{r['peak_rss_mb']:>12.0f}")
    print(f"dataset item (load + decode + transforms): {1000 * statistics.mean(r['item_s'] for r in rows):.1f} ms")


if __name__ == "__main__":
    main()
