"""Search spaces as data: YAML files in this folder -> validated Ray Tune param spaces.

A search-space file names :class:`~trainables.config.TrialConfig` fields and how to sample them::

    params:
      lr_transformer: {type: loguniform, low: 2.0e-5, high: 3.0e-4}
      warmup_steps:   {type: qrandint, low: 0, high: 100, q: 10}
      resolution:     {type: choice, values: [672, 1008]}
    baseline: {}                 # optional: trial 0 = TrialConfig's defaults (SAM3's published values) of
                                 # every searched param, with these overrides ({resolution: 672}, say)
    points_to_evaluate:          # optional: more points, each setting every searched param; after the baseline
      - {lr_transformer: 8.0e-5, warmup_steps: 20, resolution: 1008}

Types (Ray Tune semantics): ``uniform``/``loguniform``/``quniform`` (floats; ``q`` for the quantum),
``randint`` (integers, ``high`` excluded), ``qrandint`` (integers, ``high`` included), ``choice``.
Bounds are numbers under :mod:`common.typed_yaml`'s rule (``1e-5`` is a float). Every problem in a file is
reported at once as an :class:`~common.errors.InputError` naming the file and the key. Fields that shape the
sweep itself (``max_steps``, workers, GPUs, backend, data paths: ``searchable=False`` in
:class:`~trainables.config.TrialConfig`) are fixed per sweep and cannot be searched.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from common.errors import InputError
from common.typed_yaml import as_number, excerpt, load_yaml
from trainables.config import TrialConfig, searchable_fields

_RANGE_TYPES = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "quniform": ("low", "high", "q"),
                "randint": ("low", "high"), "qrandint": ("low", "high", "q")}
_INT_TYPES = {"randint", "qrandint"}
_TOP_LEVEL_KEYS = {"params", "baseline", "points_to_evaluate"}


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space: the Tune ``param_space`` and the points to evaluate first."""

    params: dict[str, Any]
    points_to_evaluate: list[dict[str, Any]]
    source: str


def load_search_space(path: str | Path) -> dict[str, Any]:
    """The Ray Tune param space of the search-space file ``path`` (see the module doc for the schema)."""
    return load_search_spec(path).params


def load_search_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search-space file; raise :class:`InputError` listing every problem."""
    raw = load_yaml(path, "search space")
    return parse_search_spec(raw, source=str(path))


def parse_search_spec(raw: Any, *, source: str) -> SearchSpec:
    """Validate an already-parsed search-space mapping; ``source`` names it in error messages."""
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise InputError(f"{source}: a search space needs a non-empty 'params' mapping")
    problems = [f"{key}: unknown top-level key (expected {sorted(_TOP_LEVEL_KEYS)})"
                for key in sorted(set(raw) - _TOP_LEVEL_KEYS)]
    params: dict[str, Any] = {}
    for name, spec in raw["params"].items():
        domain = _domain(str(name), spec, problems)
        if domain is not None:
            params[name] = domain
    points = _baseline(raw, problems) + _points(raw.get("points_to_evaluate") or [], raw["params"], problems)
    if problems:
        raise InputError(f"{source}: invalid search space", problems)
    return SearchSpec(params=params, points_to_evaluate=points, source=source)


def _baseline(raw: dict[str, Any], problems: list[str]) -> list[Any]:
    """``[the baseline point]`` (TrialConfig's defaults of every searched param, with ``baseline``'s overrides),
    or ``[]`` when the file has no ``baseline`` key."""
    if "baseline" not in raw:
        return []
    overrides = raw["baseline"] if raw["baseline"] is not None else {}
    if not isinstance(overrides, dict):
        problems.append(f"baseline: expected a mapping of searched params to values, got {excerpt(overrides)}")
        return []
    unknown = sorted(set(overrides) - set(raw["params"]), key=str)
    if unknown:
        problems.append(f"baseline: {unknown} are not searched params (searched: {sorted(raw['params'])})")
        return []
    defaults = TrialConfig()
    point = {name: overrides.get(name, getattr(defaults, name, None)) for name in raw["params"]}
    checked = _point("baseline", point, raw["params"], problems)
    return [] if checked is None else [checked]


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrialConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrialConfig)}


def _trial_rejects(name: str, value: Any) -> str | None:
    """TrialConfig's own complaint about ``name = value``, or None when it is accepted."""
    try:
        TrialConfig().replace(**{name: value})
    except (InputError, TypeError, ValueError) as err:
        return str(err).replace("\n", " ")
    return None


def _domain(name: str, spec: Any, problems: list[str]) -> Any:
    """The Tune domain for one ``params`` entry, appending problems instead of raising."""
    where = f"params.{name}"
    fields = _field_types()
    if name not in fields:
        problems.append(f"{where}: not a TrialConfig field (valid: {searchable_fields()})")
        return None
    if name not in searchable_fields():
        problems.append(f"{where}: fixed per sweep, set it in the sweep config's 'trial' section instead")
        return None
    if not isinstance(spec, dict) or "type" not in spec:
        problems.append(f"{where}: expected a mapping with a 'type' key, got {excerpt(spec)}")
        return None
    kind = spec["type"]
    if kind == "choice":
        return _choice(where, name, spec, problems)
    if not isinstance(kind, str) or kind not in _RANGE_TYPES:
        problems.append(f"{where}: unknown type {excerpt(kind)} (expected one of {sorted([*_RANGE_TYPES, 'choice'])})")
        return None
    wanted = set(_RANGE_TYPES[kind]) | {"type"}
    if set(spec) != wanted:
        problems.append(f"{where}: type {kind} takes exactly the keys {sorted(wanted)}, got {sorted(spec)}")
        return None
    try:
        cast = int if kind in _INT_TYPES else float
        bounds = {k: as_number(spec[k], cast) for k in _RANGE_TYPES[kind]}
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return None
    before = len(problems)
    if fields[name] is int and kind not in _INT_TYPES:
        problems.append(f"{where}: {name} is an integer; use randint, qrandint or choice, not {kind}")
    if fields[name] is float and kind in _INT_TYPES:
        problems.append(f"{where}: {name} is a float; use uniform, loguniform or quniform, not {kind}")
    low, high = bounds["low"], bounds["high"]
    if low > high or (kind == "randint" and low == high):
        problems.append(f"{where}: low {low} must be below high {high}")
    if kind == "loguniform" and low <= 0:
        problems.append(f"{where}: a log scale needs positive bounds, got low {low}")
    if "q" in bounds and bounds["q"] <= 0:
        problems.append(f"{where}: q must be positive, got {bounds['q']}")
    for bound in (low, high - 1 if kind == "randint" else high):
        complaint = _trial_rejects(name, bound)
        if complaint:
            problems.append(f"{where}: bound {bound} is rejected by TrialConfig: {complaint}")
    if len(problems) > before:
        return None
    return getattr(tune, kind)(*(bounds[k] for k in _RANGE_TYPES[kind]))


def _choice(where: str, name: str, spec: dict[str, Any], problems: list[str]) -> Any:
    if set(spec) != {"type", "values"}:
        problems.append(f"{where}: type choice takes exactly the keys ['type', 'values'], got {sorted(spec)}")
        return None
    values = spec["values"]
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: choice needs a non-empty list of values, got {excerpt(values)}")
        return None
    bad = [f"{where}: value {excerpt(v)} is rejected by TrialConfig: {c}" for v in values if (c := _trial_rejects(name, v))]
    problems.extend(bad)
    return None if bad else tune.choice(values)


def _points(points: Any, params: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    """Validate ``points_to_evaluate``: each point sets every param to a value its domain can produce."""
    if not isinstance(points, list):
        problems.append(f"points_to_evaluate: expected a list of mappings, got {excerpt(points)}")
        return []
    checked = [_point(f"points_to_evaluate[{i}]", point, params, problems) for i, point in enumerate(points)]
    return [point for point in checked if point is not None]


def _point(where: str, point: Any, params: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """One point checked against the raw ``params`` domains (its numbers as the domains' types), or None."""
    if not isinstance(point, dict):
        problems.append(f"{where}: expected a mapping, got {excerpt(point)}")
        return None
    if set(point) != set(params):
        problems.append(f"{where}: must set exactly the searched params; missing "
                        f"{sorted(set(params) - set(point))}, unknown {sorted(set(point) - set(params))}")
        return None
    clean = {}
    for name, value in point.items():
        spec = params[name] if isinstance(params[name], dict) else {}
        ok, clean[name] = _inside(spec, value)
        if not ok:
            problems.append(f"{where}.{name}: {excerpt(value)} lies outside its search domain {excerpt(spec, 200)}")
    return clean


def _inside(spec: dict[str, Any], value: Any) -> tuple[bool, Any]:
    """Whether ``value`` lies in the (raw YAML) domain ``spec``, and the value as the domain's number type."""
    kind = spec.get("type")
    if kind == "choice":
        values = spec.get("values")
        return isinstance(values, list) and value in values, value
    if not isinstance(kind, str) or kind not in _RANGE_TYPES:
        return True, value  # the domain itself is already reported as invalid
    try:
        v = as_number(value, int if kind in _INT_TYPES else float)
        low, high = as_number(spec["low"], float), as_number(spec["high"], float)
    except (KeyError, ValueError):
        return False, value
    return (low <= v < high) if kind == "randint" else (low <= v <= high), v
