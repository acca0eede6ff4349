"""One number rule for every config: the sweep YAML, a trial's settings and a search space read a number alike.

PyYAML follows YAML 1.1, which reads ``2e-3`` (no dot) as a string; a float setting reads it as 0.002 wherever
it is written. NaN and infinities are refused everywhere; an integer setting takes a whole number only.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from common.errors import InputError
from common.typed_yaml import as_number
from search_spaces import parse_search_spec
from sweeps.config import parse_sweep_config
from trainables.config import TrialConfig, searchable_fields


@pytest.mark.parametrize("value, kind, expected", [
    (2, float, 2.0), ("2e-3", float, 0.002), (" 1.5 ", float, 1.5), (200, int, 200), (200.0, int, 200),
    ("2e2", int, 200),
])
def test_numbers_that_are_accepted(value, kind, expected):
    number = as_number(value, kind)
    assert number == expected and type(number) is kind


@pytest.mark.parametrize("value, kind, message", [
    (True, float, "expected float, got True"), ("fast", float, "expected float, got 'fast'"),
    (2.5, int, "expected int, got 2.5"), (float("nan"), float, "expected a finite float"),
    ("inf", float, "expected a finite float"), ("nan", int, "expected a finite int"), (None, float, "got None"),
    ([1], int, "got [1]"),
])
def test_numbers_that_are_refused(value, kind, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        as_number(value, kind)


def sweep(**changes) -> dict:
    return {"name": "s", "storage_path": "/tmp/sweeps", "search_space": "search_spaces/local.yaml",
            "trial": {}, **changes}


def refusal(build) -> str:
    with pytest.raises(InputError) as err:
        build()
    return str(err.value)


@pytest.mark.parametrize("text, accepted", [("2e-1", 0.2), ("0.2", 0.2), ("2", 2.0), (".nan", None),
                                            ("-.inf", None), ("'x'", None)])
def test_the_three_configs_read_a_float_alike(text, accepted):
    value = yaml.safe_load(f"v: {text}")["v"]
    builds = {
        "sweep": lambda: parse_sweep_config(sweep(ray={"health_check_interval_s": value}),
                                            source="s").ray.health_check_interval_s,
        "trial": lambda: parse_sweep_config(sweep(trial={"weight_decay": value}), source="s").trial.weight_decay,
        "search space": lambda: parse_search_spec(
            {"params": {"weight_decay": {"type": "uniform", "low": value, "high": 10.0}}}, source="p")
        .params["weight_decay"].lower,
    }
    for where, build in builds.items():
        if accepted is None:
            assert "expected" in refusal(build), where
        else:
            assert build() == accepted, where


@pytest.mark.parametrize("text, accepted", [("30", 30), ("30.0", 30), ("3e1", 30), ("30.5", None),
                                            ("true", None)])
def test_the_three_configs_read_an_integer_alike(text, accepted):
    value = yaml.safe_load(f"v: {text}")["v"]
    builds = {
        "sweep": lambda: parse_sweep_config(sweep(num_samples=value), source="s").num_samples,
        "trial": lambda: parse_sweep_config(sweep(trial={"warmup_steps": value}), source="s").trial.warmup_steps,
        "search space": lambda: parse_search_spec(
            {"params": {"warmup_steps": {"type": "randint", "low": 0, "high": value}}}, source="p")
        .params["warmup_steps"].upper,
    }
    for where, build in builds.items():
        if accepted is None:
            assert "expected int" in refusal(build), where
        else:
            assert build() == accepted and type(build()) is int, where


def test_every_trial_setting_is_documented_where_it_is_declared():
    for f in dataclasses.fields(TrialConfig):
        assert len(f.metadata.get("doc", "")) > 10, f"TrialConfig.{f.name} has no description"


def test_what_a_search_space_may_vary_is_declared_on_the_setting():
    searchable = set(searchable_fields())
    assert {"lr_transformer", "loss_dice", "warmup_steps", "resolution"} <= searchable
    assert not {"max_steps", "num_workers", "use_gpu", "train_json", "checkpoint", "val_every"} & searchable
    message = refusal(lambda: parse_search_spec({"params": {"val_every": {"type": "randint", "low": 1, "high": 9}}},
                                                source="p"))
    assert "params.val_every: fixed per sweep" in message


def test_the_baseline_point_is_trial_configs_defaults_with_its_overrides():
    params = {"lr_transformer": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
              "loss_dice": {"type": "uniform", "low": 1.0, "high": 20.0}}
    (point,) = parse_search_spec({"params": params, "baseline": {}}, source="p").points_to_evaluate
    defaults = TrialConfig()
    assert point == {"lr_transformer": defaults.lr_transformer, "loss_dice": defaults.loss_dice}
    first, second = parse_search_spec({"params": params, "baseline": {"lr_transformer": 1e-3},
                                       "points_to_evaluate": [{"lr_transformer": 2e-3, "loss_dice": 2.0}]},
                                      source="p").points_to_evaluate
    assert first == {"lr_transformer": 1e-3, "loss_dice": defaults.loss_dice}
    assert second == {"lr_transformer": 2e-3, "loss_dice": 2.0}


def test_a_baseline_outside_the_space_or_naming_an_unsearched_param_is_refused():
    narrow = {"params": {"loss_dice": {"type": "uniform", "low": 15.0, "high": 20.0}}, "baseline": {}}
    assert "baseline.loss_dice: 10.0 lies outside its search domain" in refusal(
        lambda: parse_search_spec(narrow, source="p"))
    assert "baseline: ['loss_ce'] are not searched params" in refusal(
        lambda: parse_search_spec({**narrow, "baseline": {"loss_ce": 1.0}}, source="p"))
