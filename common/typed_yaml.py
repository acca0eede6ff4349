"""Typed configuration from YAML: one loader, one rule for numbers, one type checker for every config.

The sweep config (:mod:`sweeps.config`), a trial's settings (:mod:`trainables.config`) and the search spaces
(:mod:`search_spaces`) are dataclasses or numbers read from YAML; all three go through this module, so a value
means the same thing wherever it is written.

The number rule (:func:`as_number`):

- ``true``/``false`` are never numbers;
- a float setting takes any finite number, and a numeric string: PyYAML follows YAML 1.1, which reads
  ``2e-3`` (no dot) as the string ``"2e-3"``, so such strings are read as the number they spell;
- an integer setting takes a whole number, written ``200``, ``200.0`` or ``2e2``; ``2.5`` is refused;
- NaN and infinities are refused everywhere.

:func:`parse_fields` checks a mapping against a dataclass (nested dataclasses, ``X | None``, ``Literal``
choices, ``int``, ``float``, ``bool``, ``str``) and appends one problem per bad key, named by its dotted path
(``scheduler.grace_period``), so that every problem of a file is reported at once.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from common.errors import InputError

#: What :func:`check_value` returns for a value it refused (the problem is already appended).
INVALID = object()


def load_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file, or raise :class:`InputError` naming the file and ``what`` it should hold."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err


def as_number(value: Any, kind: type) -> int | float:
    """``value`` as a plain ``int`` or ``float`` (``kind``) under the number rule above; ``ValueError`` if not."""
    if isinstance(value, bool):
        raise ValueError(f"expected {kind.__name__}, got {value!r}")
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected {kind.__name__}, got {value!r}") from None
    else:
        raise ValueError(f"expected {kind.__name__}, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite {kind.__name__}, got {value!r}")
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if number != int(number):
            raise ValueError(f"expected int, got {value!r}")
        return int(number)
    return number


def _union_options(hint: Any) -> tuple[Any, ...]:
    """The options of ``X | Y`` (either spelling of a union), or ``()`` for any other annotation."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()


def type_name(hint: Any) -> str:
    """A field annotation as a user reads it: ``int``, ``str or null``, ``one of ['a', 'b']``."""
    if typing.get_origin(hint) is Literal:
        return f"one of {list(typing.get_args(hint))}"
    options = _union_options(hint) or (hint,)
    return " or ".join("null" if o is type(None) else type_name(o) if typing.get_origin(o) is Literal
                       else "a mapping" if dataclasses.is_dataclass(o) else o.__name__ for o in options)


def check_value(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` checked (and numbers converted) against the annotation ``hint``; :data:`INVALID` after
    appending the problem to ``problems`` when it does not fit."""
    expected = type_name(hint)
    options = _union_options(hint)
    if type(None) in options:  # X | None
        if value is None:
            return None
        hint = next(o for o in options if o is not type(None))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return INVALID
        before = len(problems)
        built = parse_fields(hint, value, f"{where}.", problems)
        return hint(**built) if len(problems) == before else INVALID
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            problems.append(f"{where}: {value!r} is not {expected}")
            return INVALID
        return value
    if hint in (int, float):
        try:
            return as_number(value, hint)
        except ValueError as err:
            problems.append(f"{where}: {str(err).replace(hint.__name__, expected, 1)}")
            return INVALID
    if isinstance(value, hint):
        return value
    problems.append(f"{where}: expected {expected}, got {value!r}")
    return INVALID


def parse_fields(cls: type, raw: Mapping[str, Any], prefix: str, problems: list[str],
                 skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` found in ``raw``, each checked with :func:`check_value`.

    Appends to ``problems`` (keys named ``prefix + key``): unknown keys, missing required fields, values of the
    wrong type. Fields in ``skip`` are left to the caller.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    skip = set(skip)
    for key in sorted(set(raw) - set(fields), key=str):
        problems.append(f"{prefix}{key}: unknown key (valid: {sorted(fields)})")
    problems += [f"{prefix}{name}: required" for name, f in fields.items()
                 if name not in raw and name not in skip
                 and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    out: dict[str, Any] = {}
    for name in fields:
        if name in skip or name not in raw:
            continue
        value = check_value(hints[name], raw[name], f"{prefix}{name}", problems)
        if value is not INVALID:
            out[name] = value
    return out
