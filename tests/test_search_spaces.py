"""Search spaces are data: the shipped files load, and every malformed entry is refused by name."""

from __future__ import annotations

import pytest
import yaml
from ray import tune

from common.errors import InputError
from search_spaces import load_search_space, load_search_spec
from trainables.config import TrialConfig

SHIPPED = ["search_spaces/stage2.yaml", "search_spaces/local.yaml"]


def write(tmp_path, content) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def refused(tmp_path, content) -> str:
    path = write(tmp_path, content)
    with pytest.raises(InputError) as err:
        load_search_spec(path)
    assert path in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_spaces_sample_valid_trial_configs(path):
    space = load_search_space(path)
    for seed in range(20):
        sample = tune.search.variant_generator.generate_variants(space, random_state=seed)
        (_, config), = list(sample)
        TrialConfig().replace(**config)  # raises if a sample is invalid


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_spaces_start_from_sam3_defaults(path):
    """The first point is SAM3's published setting; the CPU demo's tiny model keeps SAM3's loss weights but
    needs its own (higher) learning rates, those of bench/learning.py."""
    (baseline,) = load_search_spec(path).points_to_evaluate
    defaults = TrialConfig()
    if path.endswith("local.yaml"):
        assert (baseline.pop("lr_transformer"), baseline.pop("lr_vision")) == (1e-3, 1e-3)
    assert baseline == {name: getattr(defaults, name) for name in baseline}


def test_stage2_ranges_span_both_published_loss_settings():
    space = load_search_space("search_spaces/stage2.yaml")
    for name, published in {"loss_mask": (20, 200), "loss_dice": (1, 10), "loss_ce": (20, 100)}.items():
        assert space[name].lower <= min(published) and max(published) <= space[name].upper


def test_a_resolution_choice_and_integer_params_load(tmp_path):
    space = load_search_space(write(tmp_path, {"params": {
        "resolution": {"type": "choice", "values": [672, 1008]},
        "warmup_steps": {"type": "qrandint", "low": 0, "high": 100, "q": 10}}}))
    assert space["resolution"].categories == [672, 1008]


def test_yaml_1_1_exponent_strings_are_read_as_numbers(tmp_path):
    space = load_search_space(write(tmp_path, "params:\n  lr_vision: {type: loguniform, low: 1e-6, high: 1e-4}\n"))
    assert (space["lr_vision"].lower, space["lr_vision"].upper) == (1e-6, 1e-4)


@pytest.mark.parametrize("params, message", [
    ({"lr_transfomer": {"type": "uniform", "low": 0.1, "high": 1}}, "params.lr_transfomer: not a TrialConfig field"),
    ({"max_steps": {"type": "randint", "low": 10, "high": 20}}, "params.max_steps: fixed per sweep"),
    ({"loss_ce": {"type": "normal", "low": 1, "high": 2}}, "params.loss_ce: unknown type 'normal'"),
    ({"loss_ce": {"type": "uniform", "low": 50, "high": 20}}, "params.loss_ce: low 50.0 must be below high 20.0"),
    ({"lr_vision": {"type": "loguniform", "low": 0, "high": 1e-4}}, "params.lr_vision: a log scale needs positive"),
    ({"resolution": {"type": "choice", "values": []}}, "params.resolution: choice needs a non-empty list"),
    ({"resolution": {"type": "choice", "values": [672, 1000]}},
     "params.resolution: value 1000 is rejected by TrialConfig"),
    ({"loss_ce": {"type": "uniform", "low": -1, "high": 2}}, "params.loss_ce: bound -1.0 is rejected"),
    ({"loss_ce": {"type": "uniform", "low": 1}}, "params.loss_ce: type uniform takes exactly the keys"),
    ({"loss_ce": {"type": "uniform", "low": "x", "high": 2}}, "params.loss_ce: expected float, got 'x'"),
    ({"warmup_steps": {"type": "uniform", "low": 0, "high": 100}}, "params.warmup_steps: warmup_steps is an integer"),
    ({"loss_ce": {"type": "randint", "low": 1, "high": 5}}, "params.loss_ce: loss_ce is a float"),
    ({"loss_ce": 20}, "params.loss_ce: expected a mapping with a 'type' key"),
])
def test_each_malformed_entry_is_refused_naming_file_and_key(tmp_path, params, message):
    assert message in refused(tmp_path, {"params": params})


def test_all_problems_are_listed_at_once(tmp_path):
    text = refused(tmp_path, {"params": {"nope": {"type": "uniform", "low": 0, "high": 1},
                                         "loss_ce": {"type": "uniform", "low": 5, "high": 1}}, "extra": 1})
    assert "params.nope" in text and "params.loss_ce" in text and "extra: unknown top-level key" in text


@pytest.mark.parametrize("points, message", [
    ([{"loss_ce": 500.0}], "points_to_evaluate[0].loss_ce: 500.0 lies outside its search domain"),
    ([{"loss_ce": 20.0, "loss_dice": 1.0}], "points_to_evaluate[0]: must set exactly the searched params"),
    ([{}], "missing ['loss_ce']"),
    ("baseline", "points_to_evaluate: expected a list"),
])
def test_points_to_evaluate_must_lie_in_the_space(tmp_path, points, message):
    text = refused(tmp_path, {"params": {"loss_ce": {"type": "uniform", "low": 10, "high": 100}},
                              "points_to_evaluate": points})
    assert message in text


def test_an_empty_or_missing_file_is_refused(tmp_path):
    assert "non-empty 'params'" in refused(tmp_path, "")
    with pytest.raises(InputError, match="cannot read"):
        load_search_spec(tmp_path / "absent.yaml")
