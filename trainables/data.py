"""COCO CASS -> sam3's native batches: one image asks all 14 CASS prompts.

Built from sam3's own pieces (``sam3/train/data`` and ``sam3/train/transforms``), wired as sam3's shipped
fine-tuning configs wire them (``configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml``):

* Loading: ``CustomCocoDetectionAPI`` with ``COCO_FROM_JSON`` turns one COCO image into one sam3
  ``Datapoint`` with one ``FindQueryLoaded`` per category of the file, in category-id order, with the
  category ``name`` (the CASS prompt) as query text. A category with instances is a positive query (its
  instances' boxes and RLE masks are the targets); one without is a negative query (no targets, so the
  presence token learns "absent"). It is built with ``training=False`` so every query row carries its
  COCO ``image_id``, ``category_id`` and original ``(height, width)`` (``batch.find_metadatas[0]``
  ``.original_image_id / .original_category_id / .original_size``): what validation needs to map a row's
  prediction back to the original image.
* Transforms (train): ``DecodeRle`` -> ``RandomResizeAPI`` (square, a random side from
  :func:`resize_scales`: multiples of 32 in ``[MIN_SCALE, 1] x resolution``, and the resolution) ->
  ``PadToSizeAPI`` (pad to the trial resolution at a random place, with black as sam3 does: together a
  small scale + translation jitter) -> optional
  ``RandomHorizontalFlip`` (only when ``hflip``: a flip swaps left/right coronary anatomy) -> optional
  ``ColorJitter`` (brightness and contrast only) -> ``ToTensorAPI`` -> ``FilterEmptyTargets`` ->
  ``NormalizeAPI`` (sam3's mean = std = 0.5; boxes become normalised cx, cy, w, h).
  Validation: ``DecodeRle`` -> square resize to the resolution -> ``ToTensorAPI`` -> ``NormalizeAPI``
  (no padding, so a ``resolution x resolution`` prediction resizes straight back to ``original_size``).
  sam3 resizes to a square without keeping the aspect ratio (``square=True``); so do we.
* Randomness: sam3's transforms draw from Python's ``random`` and torch's global generator. Each item
  runs them under a generator seeded from ``(seed, epoch, index)`` (and restores the caller's state), so an
  item is the same in any worker process and any order, and differs between epochs.
* Batches: ``collate_fn_api`` (sam3's collator) makes a ``BatchedDatapoint``. Training batches are lists
  of ``Datapoint``; :func:`iter_prompt_chunks` collates them ``category_chunk_size`` prompts at a time.

Chunking and the loss: each chunk is a separate ``BatchedDatapoint`` (all images, ``k`` prompts each),
forwarded and back-propagated on its own; gradients accumulate. sam3 normalises the classification and
presence losses per query row and the box and mask losses per ground-truth instance *of the forwarded
batch*, so a chunk alone would be normalised by its own instance count. A :class:`PromptChunk` therefore
carries its whole batch's row and instance counts, and :mod:`trainables.loss` normalises the chunk as part
of that batch; with the yielded weight (the chunk's share of the rows) the chunk losses sum to the
unchunked loss, and the gradients to the unchunked gradient.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sam3.model.data_misc import BatchedDatapoint
from sam3.train.data.coco_json_loaders import COCO_FROM_JSON
from sam3.train.data.collator import collate_fn_api
from sam3.train.data.sam3_image_dataset import (
    CustomCocoDetectionAPI,
    Datapoint,
    FindQueryLoaded,
    InferenceMetadata,
)
from sam3.train.data.sam3_image_dataset import Image as Sam3Image
from sam3.train.transforms.basic import get_random_resize_scales
from sam3.train.transforms.basic_for_api import (
    ColorJitter,
    ComposeAPI,
    NormalizeAPI,
    PadToSizeAPI,
    RandomHorizontalFlip,
    RandomResizeAPI,
    ToTensorAPI,
)
from sam3.train.transforms.filter_query_transforms import FilterEmptyTargets, FlexibleFilterFindGetQueries
from sam3.train.transforms.segmentation import DecodeRle
from torch.utils.data import DataLoader, DistributedSampler

from data_prep.validate import validate_coco
from trainables.config import TrialConfig

log = logging.getLogger(__name__)

IMAGE_MEAN = (0.5, 0.5, 0.5)  # sam3's normalisation (sam3_image_processor.py:26 and its training configs)
IMAGE_STD = (0.5, 0.5, 0.5)
MIN_SCALE = 0.8  # training images are resized to a random square side in [0.8, 1] x resolution, then padded
HFLIP_PROBABILITY = 0.5


def resize_scales(resolution: int) -> list[int]:
    """Square sides a training image is resized to: sam3's ``get_random_resize_scales`` (multiples of 32
    from ``MIN_SCALE * resolution``) plus ``resolution`` itself, which sam3's list omits unless it is a
    multiple of 32 (336 and 1008 are not)."""
    return sorted({*get_random_resize_scales(resolution, int(MIN_SCALE * resolution), rounded=False), resolution})


def train_transforms(resolution: int, *, hflip: bool, brightness_contrast: float) -> ComposeAPI:
    """sam3's training transforms for one trial: scale/translate jitter, optional flip and photometric jitter."""
    steps = [
        DecodeRle(),
        RandomResizeAPI(sizes=resize_scales(resolution), consistent_transform=False, square=True),
        PadToSizeAPI(resolution, consistent_transform=False),
    ]
    if hflip:
        steps.append(RandomHorizontalFlip(consistent_transform=False, p=HFLIP_PROBABILITY))
    if brightness_contrast > 0:
        steps.append(ColorJitter(consistent_transform=False, brightness=brightness_contrast,
                                 contrast=brightness_contrast, saturation=0.0, hue=None))
    steps += [
        ToTensorAPI(),
        FlexibleFilterFindGetQueries(FilterEmptyTargets()),
        NormalizeAPI(mean=IMAGE_MEAN, std=IMAGE_STD),
    ]
    return ComposeAPI(steps)


def val_transforms(resolution: int) -> ComposeAPI:
    """sam3's validation transforms: a plain square resize to ``resolution`` and normalisation."""
    return ComposeAPI([
        DecodeRle(),
        RandomResizeAPI(sizes=resolution, consistent_transform=False, square=True),
        ToTensorAPI(),
        NormalizeAPI(mean=IMAGE_MEAN, std=IMAGE_STD),
    ])


@contextmanager
def _seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's ``random`` and torch's CPU generator for a block; restore the caller's states after."""
    state = random.getstate()
    random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(state)


class CassDataset(torch.utils.data.Dataset):
    """A COCO CASS file as sam3 ``Datapoint``s: one image, one text query per category (14 for CASS).

    ``annotations``: the COCO JSON; ``images_dir``: the folder its ``file_name``s are relative to. Both
    are checked with :func:`data_prep.validate.validate_coco` on construction (an ``InputError`` lists
    every problem; an image file outside ``images_dir`` is refused unless ``follow_links``). Items are ordered by COCO image id. ``train`` selects augmentation
    (:func:`train_transforms`) or none (:func:`val_transforms`); training items are a deterministic
    function of ``(seed, epoch, index)`` (:meth:`set_epoch`).
    """

    def __init__(self, annotations: str | Path, images_dir: str | Path, resolution: int, *, train: bool,
                 hflip: bool = False, brightness_contrast: float = 0.0, seed: int = 0,
                 follow_links: bool = False, vessel: bool = False) -> None:
        report = validate_coco(Path(annotations), Path(images_dir), follow_links=follow_links, vessel=vessel)
        report.raise_if_errors()
        for warning in report.warnings:
            log.warning("%s", warning)
        self.annotations = Path(annotations)
        self.resolution = resolution
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._coco = CustomCocoDetectionAPI(str(images_dir), str(annotations), load_segmentation=True,
                                            training=False, coco_json_loader=COCO_FROM_JSON)
        self._transforms = (train_transforms(resolution, hflip=hflip, brightness_contrast=brightness_contrast)
                            if train else val_transforms(resolution))

    def __len__(self) -> int:
        return len(self._coco)

    def __getitem__(self, index: int) -> Datapoint:
        datapoint = self._coco[index]
        datapoint.raw_images = None  # the original PIL images: unused, and costly to send between workers
        with _seeded_rng(self.item_seed(index)):
            return self._transforms(datapoint, epoch=self.epoch)

    def item_seed(self, index: int) -> int:
        """The seed of item ``index`` in the current epoch."""
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of ``epoch`` (the train sampler calls this from its ``set_epoch``)."""
        self.epoch = epoch

    def coco_gt(self) -> dict:
        """The COCO file as a dict (ground truth for :class:`trainables.metrics.CassEvaluator`)."""
        return json.loads(self.annotations.read_text(encoding="utf-8"))


def collate(datapoints: Sequence[Datapoint]) -> BatchedDatapoint:
    """sam3's ``collate_fn_api`` with instance masks, unwrapped from its one-key dict."""
    return collate_fn_api(list(datapoints), dict_key="batch", with_seg_masks=True)["batch"]


@dataclass(frozen=True)
class PromptChunk:
    """A few prompts of every image of a batch, collated, with what its loss needs of the whole batch.

    ``rows``: find-query rows (image x prompt) in this chunk; ``batch_rows`` and ``batch_boxes``: rows and
    ground-truth instances in the whole batch on this rank (see :mod:`trainables.loss`).
    """

    batch: BatchedDatapoint
    rows: int
    batch_rows: int
    batch_boxes: int

    @property
    def row_fraction(self) -> float:
        """This chunk's share of the batch's rows: the weight of its loss and gradient."""
        return self.rows / self.batch_rows


def iter_prompt_chunks(datapoints: Sequence[Datapoint], chunk_size: int) -> Iterator[tuple[PromptChunk, float]]:
    """Split a batch into chunks of ``chunk_size`` prompts per image; yield ``(chunk, weight)``.

    Chunk ``c`` holds prompts ``[c * chunk_size, (c + 1) * chunk_size)`` of every image (its queries keep
    their targets; the images are shared). Chunks are collated lazily, one at a time. ``weight`` is
    ``chunk.row_fraction``: with the chunk normalisation of :func:`trainables.loss.training_step_loss`,
    ``sum(weight * chunk_loss)`` equals the loss of the unchunked batch. ``chunk_size >= 14`` gives one chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch_rows = sum(len(d.find_queries) for d in datapoints)
    batch_boxes = sum(len(q.object_ids_output) for d in datapoints for q in d.find_queries)
    num_prompts = max(len(d.find_queries) for d in datapoints)
    for start in range(0, num_prompts, chunk_size):
        parts = [Datapoint(find_queries=d.find_queries[start:start + chunk_size], images=d.images)
                 for d in datapoints if d.find_queries[start:start + chunk_size]]
        rows = sum(len(p.find_queries) for p in parts)
        yield PromptChunk(collate(parts), rows, batch_rows, batch_boxes), rows / batch_rows


class _TrainSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, padded to equal shares) whose ``set_epoch`` also sets the
    dataset's augmentation epoch, so the train loop's one ``loader.sampler.set_epoch(e)`` call does both."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class _ValSampler(DistributedSampler):
    """Rank ``r`` of ``w`` gets images ``r, r + w, r + 2w, ...`` in order: every image exactly once over all
    ranks. ``DistributedSampler`` would instead pad with repeated images (``drop_last=False``) or drop the
    tail (``drop_last=True``), double-counting or losing images in the metrics. Ranks may differ by one
    batch, so validation must not run collectives per batch (run the unwrapped model, not DDP)."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, max_images: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        total = len(dataset) if max_images is None else min(max_images, len(dataset))
        self.indices = range(rank, total, num_replicas)  # the first ``max_images`` images, split over ranks

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_dataset(cfg: TrialConfig, split: str) -> CassDataset:
    """The ``train`` or ``val`` :class:`CassDataset` of a trial (augmented only for ``train``)."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r} is not one of 'train', 'val'")
    train = split == "train"
    return CassDataset(cfg.train_json if train else cfg.val_json, cfg.images_dir, cfg.resolution, train=train,
                       hflip=cfg.hflip, brightness_contrast=cfg.brightness_contrast, seed=cfg.seed,
                       follow_links=cfg.follow_image_links, vessel=cfg.categories == "vessel")


def build_loader(cfg: TrialConfig, split: str, *, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0) -> DataLoader:
    """This rank's loader of ``cfg.batch_size`` images per batch (``cfg.val_batch_size``, when set, for ``val``).

    ``train``: a seeded shuffling ``DistributedSampler`` (every rank gets the same number of images, the
    last few repeated when needed; call ``loader.sampler.set_epoch(e)`` each epoch); batches are lists of
    ``Datapoint`` for :func:`iter_prompt_chunks`. ``val``: each image once over all ranks, in order, no
    augmentation (the first ``cfg.val_max_images`` images when set); batches are ``BatchedDatapoint``s
    (all 14 prompts per image).
    ``num_workers``: DataLoader worker processes (items do not depend on which worker builds them).
    """
    dataset = build_dataset(cfg, split)
    if split == "train":
        sampler = _TrainSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed)
        collate_fn = list
    else:
        sampler = _ValSampler(dataset, num_replicas=world_size, rank=rank, max_images=cfg.val_max_images)
        collate_fn = collate
    # A loader of its own RNG: every new iterator draws a base seed, which would otherwise come from the
    # global torch RNG and make a resumed trial's dropout stream differ from the uninterrupted one.
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    batch_size = cfg.val_batch_size if split == "val" and cfg.val_batch_size else cfg.batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, generator=generator)


def unlabelled_datapoint(image, image_id: int, categories: Sequence[dict]) -> Datapoint:
    """An image without annotations (a PIL RGB image; a new angiogram) as the ``Datapoint`` that
    :class:`CassDataset`'s loader makes of a COCO image with no instance (sam3's ``COCO_FROM_JSON`` +
    ``CustomCocoDetectionAPI.load_queries``, ``training=False``): one negative query per COCO ``categories``
    entry, in id order, its ``name`` as the text, carrying ``image_id``, the category id and the original
    ``(height, width)`` for :func:`trainables.inference.predictions_from_output`. Untransformed: see
    :func:`unlabelled_batch`."""
    width, height = image.size
    queries = [FindQueryLoaded(
        query_text=category["name"], image_id=0, object_ids_output=[], is_exhaustive=True, query_processing_order=0,
        input_bbox=None, input_bbox_label=None, input_points=None, is_pixel_exhaustive=True,
        inference_metadata=InferenceMetadata(coco_image_id=image_id, original_image_id=image_id,
                                             original_category_id=category["id"], original_size=(height, width),
                                             object_id=-1, frame_index=-1))
        for category in sorted(categories, key=lambda c: c["id"])]
    return Datapoint(find_queries=queries, images=[Sam3Image(data=image, objects=[], size=(height, width))])


def unlabelled_batch(images: Sequence[tuple[int, object]], resolution: int,
                     categories: Sequence[dict]) -> BatchedDatapoint:
    """``(image_id, PIL RGB image)`` pairs without annotations as one validation batch: each image asks every
    category (:func:`unlabelled_datapoint`) and goes through :func:`val_transforms` and :func:`collate`, as a
    :func:`build_loader` ``val`` batch does (what :mod:`sweeps.predict` feeds
    :func:`trainables.inference.predict`)."""
    transforms = val_transforms(resolution)
    datapoints = []
    for image_id, image in images:
        with _seeded_rng(0):  # the transforms draw from the global RNGs (a one-size choice): leave them as they were
            datapoints.append(transforms(unlabelled_datapoint(image, image_id, categories), epoch=0))
    return collate(datapoints)
