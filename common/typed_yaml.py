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

import yaml

from common.errors import InputError

#: What :func:`check_value` returns for a value it refused (the problem is already appended).
INVALID = object()


#: The most nodes a YAML document may expand to through its aliases (a config has a few hundred).
MAX_YAML_NODES = 100_000


def load_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML file, or raise :class:`InputError` naming the file and ``what`` it should hold.

    The file must be UTF-8 (a byte-order mark, as Windows editors write, is fine); a key given twice in one
    mapping is refused (PyYAML keeps the last silently); aliases may not expand the document past
    :data:`MAX_YAML_NODES` nodes (an "alias bomb").
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {err.start}: {err.reason}); save it as "
                         "UTF-8") from None
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as err:
        raise InputError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({excerpt(str(err), 400)})") from None
    if _expanded_size(value) > MAX_YAML_NODES:
        raise InputError(f"{path}: the {what} expands to more than {MAX_YAML_NODES} values through YAML aliases; "
                         "write it out without anchors")
    return value


class _DuplicateKey(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: key {excerpt(key)} is given twice in "
                                        "one mapping; keep one")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value: Any, limit: int = MAX_YAML_NODES) -> int:
    """How many values ``value`` holds once every alias is written out (counting stops past ``limit``)."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) not in sizes:
            sizes[id(v)] = limit + 1  # a self-referencing structure is over any limit
            children = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            total = 1
            for child in children:
                total += size(child)
                if total > limit:
                    break
            sizes[id(v)] = total
        return sizes[id(v)]

    return size(value)


def excerpt(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (error messages quote input, never all of it)."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > limit:
        return f"<a {type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def as_number(value: Any, kind: type) -> int | float:
    """``value`` as a plain ``int`` or ``float`` (``kind``) under the number rule above; ``ValueError`` if not."""
    if isinstance(value, bool):
        raise ValueError(f"expected {kind.__name__}, got {excerpt(value)}")
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected {kind.__name__}, got {excerpt(value)}") from None
    else:
        raise ValueError(f"expected {kind.__name__}, got {excerpt(value)}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite {kind.__name__}, got {excerpt(value)}")
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if number != int(number):
            raise ValueError(f"expected int, got {excerpt(value)}")
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
            problems.append(f"{where}: expected a mapping, got {excerpt(value)}")
            return INVALID
        before = len(problems)
        built = parse_fields(hint, value, f"{where}.", problems)
        return hint(**built) if len(problems) == before else INVALID
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            problems.append(f"{where}: {excerpt(value)} is not {expected}")
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
    problems.append(f"{where}: expected {expected}, got {excerpt(value)}")
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
        shown = key if isinstance(key, str) and len(key) <= 60 else excerpt(key, 60)
        problems.append(f"{prefix}{shown}: unknown key (valid: {sorted(fields)})")
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
