"""Specification of the data path: COCO CASS -> sam3 ``Datapoint``s -> ``BatchedDatapoint`` prompt chunks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam3.model.box_ops import box_cxcywh_to_xyxy
from sam3.model.data_misc import BatchedDatapoint

from common.errors import InputError
from data_prep import cass
from data_prep.coco_io import coco_document, mask_annotation, write_json_atomic
from trainables.config import TrialConfig
from trainables.data import CassDataset, build_loader, iter_prompt_chunks, resize_scales

torch.set_num_threads(1)

HEIGHT, WIDTH = 160, 200  # not square: the resize to the trial resolution changes the aspect ratio
BACKGROUND, VESSEL = 200, 40
# image index -> category ids of its instances (category 5 twice in image 1; image 2 has none at all)
INSTANCES = {0: [1, 5, 12], 1: [2, 3, 5, 5, 14], 2: [], 3: [7]}


def _bar(category_id: int, k: int) -> tuple[slice, slice]:
    """Where instance ``k`` of a category lies: a dark horizontal bar in the left quarter of the image."""
    top = 8 + 10 * (category_id - 1) + 5 * k
    return slice(top, top + 4), slice(10, 60)


def write_fixture(root: Path, n_images: int = 4) -> tuple[Path, Path]:
    """A small COCO CASS file whose every mask, box and intensity is known; returns (json, images dir)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for index in range(n_images):
        pixels = np.full((HEIGHT, WIDTH), BACKGROUND, np.uint8) + rng.integers(0, 10, (HEIGHT, WIDTH), np.uint8)
        image_id = 100 + index  # COCO ids are not indices
        seen: Counter = Counter()
        for category_id in INSTANCES.get(index, [1]):
            mask = np.zeros((HEIGHT, WIDTH), np.uint8)
            mask[_bar(category_id, seen[category_id])] = 1
            seen[category_id] += 1
            pixels[mask == 1] = VESSEL
            annotations.append(mask_annotation(mask, ann_id=len(annotations) + 1, image_id=image_id,
                                               category_id=category_id))
        Image.fromarray(pixels, mode="L").save(images_dir / f"frame_{index}.png")
        images.append({"id": image_id, "file_name": f"frame_{index}.png", "width": WIDTH, "height": HEIGHT})
    path = root / "annotations.json"
    write_json_atomic(path, coco_document(images, annotations, description="test fixture"))
    return path, images_dir


@pytest.fixture
def fixture_files(tmp_path) -> tuple[Path, Path]:
    return write_fixture(tmp_path)


def make_cfg(annotations: Path, images_dir: Path, **overrides) -> TrialConfig:
    return TrialConfig().replace(train_json=str(annotations), val_json=str(annotations), images_dir=str(images_dir),
                                 resolution=224, **overrides)


def expected_counts(annotations: Path) -> dict[tuple[int, int], int]:
    """(image id, category id) -> number of instances, straight from the COCO file."""
    coco = json.loads(annotations.read_text())
    return dict(Counter((a["image_id"], a["category_id"]) for a in coco["annotations"]))


def masks_of(datapoint, query_index: int) -> list[torch.Tensor]:
    query = datapoint.find_queries[query_index]
    return [datapoint.images[0].objects[i].segment.bool() for i in query.object_ids_output]


# --- one image, fourteen prompts ---------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_each_image_asks_the_14_cass_prompts_in_id_order(fixture_files, train):
    dataset = CassDataset(*fixture_files, 224, train=train)
    for index in range(len(dataset)):
        queries = dataset[index].find_queries
        assert [q.query_text for q in queries] == list(cass.PROMPTS)
        assert [q.inference_metadata.original_category_id for q in queries] == [c.id for c in cass.CASS_CATEGORIES]


@pytest.mark.parametrize("train", [True, False])
def test_queries_are_positive_exactly_where_the_coco_file_has_instances(fixture_files, train):
    annotations, images_dir = fixture_files
    counts = expected_counts(annotations)
    dataset = CassDataset(annotations, images_dir, 224, train=train)
    for index in range(len(dataset)):
        for query in dataset[index].find_queries:
            meta = query.inference_metadata
            assert len(query.object_ids_output) == counts.get((meta.original_image_id, meta.original_category_id), 0)
    assert all(len(q.object_ids_output) == 0 for q in dataset[2].find_queries), "image 2 has no instances"


def test_positives_match_the_coco_file_of_the_synthetic_dataset(synthetic_dataset):
    counts = expected_counts(synthetic_dataset.train_json)
    dataset = CassDataset(synthetic_dataset.train_json, synthetic_dataset.images_dir, 224, train=True)
    seen = Counter()
    for index in range(len(dataset)):
        for query in dataset[index].find_queries:
            meta = query.inference_metadata
            key = (meta.original_image_id, meta.original_category_id)
            assert len(query.object_ids_output) == counts.get(key, 0)
            seen[key] += len(query.object_ids_output)
    assert seen == Counter(counts)


def test_rows_carry_what_validation_needs_to_map_predictions_back(fixture_files):
    annotations, images_dir = fixture_files
    datapoint = CassDataset(annotations, images_dir, 224, train=False)[1]
    meta = datapoint.find_queries[0].inference_metadata
    assert (meta.original_image_id, meta.original_size) == (101, (HEIGHT, WIDTH))


# --- geometry and normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_masks_and_boxes_line_up_with_the_transformed_image(fixture_files, train):
    dataset = CassDataset(*fixture_files, 224, train=train, brightness_contrast=0.2)
    for index in (0, 1, 3):
        for epoch in range(3):
            dataset.set_epoch(epoch)
            datapoint = dataset[index]
            image = datapoint.images[0].data
            assert image.shape == (3, 224, 224)
            for obj in datapoint.images[0].objects:
                mask = obj.segment.bool()
                assert mask.shape == (224, 224) and mask.any()
                # the vessel is dark: under its mask the image is far darker than elsewhere
                assert image[0][mask].mean() < image[0][~mask].mean() - 0.5
                # the box is normalised (cx, cy, w, h) and encloses the mask
                x0, y0, x1, y1 = (box_cxcywh_to_xyxy(obj.bbox.view(1, 4))[0] * 224).tolist()
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert x0 - 1.5 <= xs.min() and xs.max() + 1 <= x1 + 1.5
                assert y0 - 1.5 <= ys.min() and ys.max() + 1 <= y1 + 1.5


def test_validation_is_a_plain_square_resize_with_sam3_normalisation(fixture_files):
    annotations, images_dir = fixture_files
    datapoint = CassDataset(annotations, images_dir, 224, train=False)[0]
    image = datapoint.images[0].data
    assert -1.0 <= image.min() and image.max() <= 1.0  # (x - 0.5) / 0.5
    assert image[0].mean() > 0.3, "no black padding: the bright background fills the whole frame"
    # the mask of category 1 (rows 8-11, cols 10-59 of 160 x 200) is rescaled by 224/160 and 224/200
    mask = masks_of(datapoint, 0)[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert abs(ys.float().mean() - 10 * 224 / HEIGHT) < 2 and abs(xs.float().mean() - 35 * 224 / WIDTH) < 2


def test_training_pads_with_black_as_sam3_does(fixture_files):
    dataset = CassDataset(*fixture_files, 224, train=True)
    padded = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        image = dataset[0].images[0].data
        padded += int((image == -1.0).all(dim=0).any())
    assert padded > 0, "some epochs draw a side < 224 and pad it with zeros (-1 after normalisation)"


@pytest.mark.parametrize("resolution, scales", [
    (224, [192, 224]),
    (336, [288, 320, 336]),  # sam3's own list stops at 320 (and at 992 for 1008)
    (1008, [832, 864, 896, 928, 960, 992, 1008]),
])
def test_training_scales_span_80_to_100_percent_of_the_resolution(resolution, scales):
    assert resize_scales(resolution) == scales


def test_no_horizontal_flip_by_default_and_flips_when_asked(fixture_files):
    """All vessels lie in the left quarter: with hflip off they stay left in every epoch."""
    def sides(hflip: bool) -> set[str]:
        dataset = CassDataset(*fixture_files, 224, train=True, hflip=hflip)
        result = set()
        for epoch in range(12):
            dataset.set_epoch(epoch)
            mask = masks_of(dataset[0], 0)[0]
            result.add("left" if torch.nonzero(mask)[:, 1].float().mean() < 112 else "right")
        return result

    assert sides(hflip=False) == {"left"}
    assert sides(hflip=True) == {"left", "right"}


# --- determinism ------------------------------------------------------------------------------------


def _fingerprint(datapoint) -> tuple:
    return (datapoint.images[0].data.sum().item(), tuple(o.bbox.sum().item() for o in datapoint.images[0].objects))


def test_training_items_are_deterministic_for_a_seed_and_vary_with_epoch_and_seed(fixture_files):
    a = CassDataset(*fixture_files, 224, train=True, brightness_contrast=0.2, seed=7)
    b = CassDataset(*fixture_files, 224, train=True, brightness_contrast=0.2, seed=7)
    first = [_fingerprint(a[i]) for i in range(len(a))]
    assert [_fingerprint(b[i]) for i in reversed(range(len(b)))] == first[::-1], "same seed, any order"
    torch.manual_seed(123)  # the caller's global RNG state does not matter ...
    state = torch.get_rng_state()
    assert _fingerprint(a[0]) == first[0]
    assert torch.equal(torch.get_rng_state(), state), "... and is left untouched"
    a.set_epoch(1)
    assert _fingerprint(a[0]) != first[0]
    c = CassDataset(*fixture_files, 224, train=True, brightness_contrast=0.2, seed=8)
    assert [_fingerprint(c[i]) for i in range(len(c))] != first


def test_validation_items_do_not_change_with_epoch_or_seed(fixture_files):
    a = CassDataset(*fixture_files, 224, train=False, seed=1)
    b = CassDataset(*fixture_files, 224, train=False, seed=2)
    b.set_epoch(5)
    assert torch.equal(a[1].images[0].data, b[1].images[0].data)


# --- validation at the edge ---------------------------------------------------------------------------


def test_a_broken_coco_file_is_refused_when_the_dataset_is_built(fixture_files):
    annotations, images_dir = fixture_files
    (images_dir / "frame_1.png").unlink()
    with pytest.raises(InputError, match="frame_1.png"):
        CassDataset(annotations, images_dir, 224, train=True)


# --- loaders and samplers ------------------------------------------------------------------------------


def _image_ids(loader) -> list[int]:
    ids = []
    for batch in loader:
        datapoints = batch if isinstance(batch, list) else None
        if datapoints is not None:
            ids += [d.find_queries[0].inference_metadata.original_image_id for d in datapoints]
        else:
            ids += batch.find_metadatas[0].original_image_id[::14].tolist()
    return ids


def test_train_sampler_partitions_images_across_two_ranks(fixture_files):
    cfg = make_cfg(*fixture_files, batch_size=1, seed=3)
    shares = [_image_ids(build_loader(cfg, "train", rank=r, world_size=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 2
    assert not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) == {100, 101, 102, 103}


def test_train_order_is_seeded_and_changes_each_epoch(fixture_files):
    cfg = make_cfg(*fixture_files, batch_size=1, seed=3)
    orders = []
    for epoch in (0, 0, 1, 2, 3):
        loader = build_loader(cfg, "train")
        loader.sampler.set_epoch(epoch)
        orders.append(_image_ids(loader))
    assert orders[0] == orders[1]
    assert len({tuple(o) for o in orders[1:]}) > 1


def test_train_sampler_set_epoch_also_changes_the_augmentation(fixture_files):
    loader = build_loader(make_cfg(*fixture_files, batch_size=1, seed=3), "train")
    loader.sampler.set_epoch(4)
    assert loader.dataset.epoch == 4


def test_validation_covers_every_image_exactly_once_over_uneven_ranks(tmp_path):
    annotations, images_dir = write_fixture(tmp_path, n_images=5)
    cfg = make_cfg(annotations, images_dir, batch_size=2)
    shares = [_image_ids(build_loader(cfg, "val", rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == [100, 101, 102, 103, 104]  # no image padded in twice
    assert [len(s) for s in shares] == [3, 2]


def test_validation_batches_are_batched_datapoints_with_14_rows_per_image(fixture_files):
    loader = build_loader(make_cfg(*fixture_files, batch_size=2), "val")
    batch = next(iter(loader))
    assert isinstance(batch, BatchedDatapoint)
    assert batch.img_batch.shape == (2, 3, 224, 224)
    meta = batch.find_metadatas[0]
    assert meta.original_image_id.tolist() == [100] * 14 + [101] * 14
    assert meta.original_category_id.tolist() == list(range(1, 15)) * 2
    assert meta.original_size.tolist() == [[HEIGHT, WIDTH]] * 28
    assert batch.find_targets[0].num_boxes.sum().item() == 3 + 5


# --- prompt chunks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size, prompts_per_chunk", [(14, [14]), (5, [5, 5, 4]), (7, [7, 7]), (20, [14])])
def test_prompt_chunks_split_the_14_prompts_of_every_image(fixture_files, chunk_size, prompts_per_chunk):
    dataset = CassDataset(*fixture_files, 224, train=True)
    datapoints = [dataset[0], dataset[1]]  # 3 + 5 instances
    chunks = list(iter_prompt_chunks(datapoints, chunk_size))
    assert [c.rows for c, _ in chunks] == [2 * p for p in prompts_per_chunk]
    assert sum(w for _, w in chunks) == pytest.approx(1.0)
    start = 0
    for chunk, weight in chunks:
        k = chunk.rows // 2
        prompts = list(cass.PROMPTS[start:start + k])
        batch = chunk.batch
        assert [batch.find_text_batch[i] for i in batch.find_inputs[0].text_ids.tolist()] == prompts * 2
        assert batch.find_inputs[0].img_ids.tolist() == [0] * k + [1] * k
        assert batch.find_metadatas[0].original_category_id.tolist() == list(range(start + 1, start + k + 1)) * 2
        assert (chunk.batch_rows, chunk.batch_boxes) == (28, 8)
        assert weight == pytest.approx(chunk.rows / 28)
        start += k
    assert sum(c.batch.find_targets[0].num_boxes.sum().item() for c, _ in chunks) == 8
    masks = torch.cat([c.batch.find_targets[0].segments for c, _ in chunks])
    assert masks.shape == (8, 224, 224) and masks.flatten(1).any(1).all()


def test_val_max_images_limits_validation_to_the_first_images_over_all_ranks(synthetic_dataset):
    from trainables.config import TrialConfig
    from trainables.data import build_loader

    cfg = TrialConfig(**synthetic_dataset.trial_fields(), val_max_images=3)
    seen = [list(build_loader(cfg, "val", rank=r, world_size=2).sampler) for r in (0, 1)]
    assert seen == [[0, 2], [1]]


def test_a_dataset_folder_gives_the_trial_fields_that_point_at_its_files(tmp_path):
    from data_prep.layout import DatasetPaths

    fields = DatasetPaths(tmp_path).trial_fields()
    assert fields == {"train_json": str(tmp_path / "annotations" / "train.json"),
                      "val_json": str(tmp_path / "annotations" / "val.json"), "images_dir": str(tmp_path / "images")}
    cfg = TrialConfig.from_dict(fields, source="test")
    assert (cfg.train_json, cfg.val_json, cfg.images_dir) == tuple(fields.values())
