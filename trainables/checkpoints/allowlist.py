"""The Python globals a training checkpoint's plain metadata needs, allowed for ``torch.load(weights_only=True)``.

Training scripts save more than tensors next to the weights: the epoch as a numpy integer, the numpy RNG state
(an array), ``argparse.Namespace`` arguments, a Hydra/OmegaConf config, paths, a timestamp. torch's weights-only
unpickler refuses every global it does not know, so such a file is refused whole. :func:`metadata_globals` lists
the globals of that metadata, each a data type whose construction runs no code of the file's choosing
(``torch.serialization.safe_globals`` takes the list); everything else is still refused, by name:

- numpy: scalars (``numpy._core.multiarray.scalar``, and ``numpy.core.multiarray.scalar`` as files written with
  numpy 1.x name it), arrays (``_reconstruct``, ``ndarray``), ``numpy.dtype`` and its classes
  (``numpy.dtypes.Float64DType``, ...: the unpickler sets a dtype's state only on an allowed type) and the
  scalar types (``numpy.float32``, ...); not ``numpy.random`` generator objects;
- ``argparse.Namespace``; ``datetime`` dates, times and durations; ``torch.torch_version.TorchVersion``;
- ``collections.defaultdict`` and the builtin types (``dict``, ``list``, ``int``, ...), which OmegaConf's
  metadata and protocol-2 pickles of sets, ranges and slices name;
- paths: ``pathlib.PosixPath`` and ``WindowsPath`` (and ``pathlib._local.*`` of Python 3.13) become the pure
  paths ``PurePosixPath`` / ``PureWindowsPath``: a file saved on Windows loads on Linux and back, and no
  filesystem method is reachable;
- OmegaConf (when installed): ``DictConfig``, ``ListConfig``, their metadata and value nodes, ``typing.Any``
  (their element type). A structured config's own dataclass or enum is not allowed: the error names it.

Refused, always: functions and methods (``pathlib.Path.touch``, ``os.system``, ``functools.partial``, ...), a
pickled ``nn.Module`` or optimizer object, any class of the training code. The context manager is process-wide
while it is open (torch keeps one list); the CLIs that use it are single-threaded.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import datetime
import importlib
import pathlib
import typing
from collections.abc import Callable

import torch

Global = tuple[Callable, str]


def metadata_globals() -> list[Global]:
    """``(object, "module.qualname" as pickled)`` for every global plain training metadata needs."""
    allowed: list[Global] = [(argparse.Namespace, "argparse.Namespace"),
                             (collections.defaultdict, "collections.defaultdict"),
                             (collections.OrderedDict, "collections.OrderedDict"),
                             (torch.torch_version.TorchVersion, "torch.torch_version.TorchVersion"),
                             (typing.Any, "typing.Any")]
    allowed += [(getattr(builtins, name), f"builtins.{name}") for name in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes", "bytearray",
        "range", "slice")]
    allowed += [(getattr(datetime, name), f"datetime.{name}") for name in (
        "datetime", "date", "time", "timedelta", "timezone")]
    for module in ("pathlib", "pathlib._local"):
        for name, pure in (("PosixPath", pathlib.PurePosixPath), ("PurePosixPath", pathlib.PurePosixPath),
                           ("WindowsPath", pathlib.PureWindowsPath), ("PureWindowsPath", pathlib.PureWindowsPath),
                           ("Path", pathlib.PurePath), ("PurePath", pathlib.PurePath)):
            allowed.append((pure, f"{module}.{name}"))
    return allowed + _numpy_globals() + _omegaconf_globals()


def _numpy_globals() -> list[Global]:
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy 2
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")  # numpy 1.x
    allowed: list[Global] = [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    for package in ("numpy._core", "numpy.core"):  # numpy 1.x files say numpy.core, numpy 2 files numpy._core
        allowed += [(multiarray.scalar, f"{package}.multiarray.scalar"),
                    (multiarray._reconstruct, f"{package}.multiarray._reconstruct")]
    dtype_classes = {type(np.dtype(kind)) for kind in set(np.sctypeDict.values())}
    for cls in sorted(dtype_classes, key=lambda c: c.__name__):
        allowed.append((cls, f"numpy.dtypes.{cls.__name__}"))  # needed by value (BUILD), not by name
        allowed.append((cls.type, f"numpy.{cls.type.__name__}"))  # the scalar type, e.g. numpy.float32
    return allowed


def _omegaconf_globals() -> list[Global]:
    try:
        from omegaconf import base, dictconfig, listconfig, nodes
    except ImportError:
        return []
    allowed: list[Global] = [(dictconfig.DictConfig, "omegaconf.dictconfig.DictConfig"),
                             (listconfig.ListConfig, "omegaconf.listconfig.ListConfig"),
                             (base.Metadata, "omegaconf.base.Metadata"),
                             (base.ContainerMetadata, "omegaconf.base.ContainerMetadata")]
    for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
                 "EnumNode", "InterpolationResultNode"):
        if hasattr(nodes, name):  # PathNode and BytesNode came with omegaconf 2.2
            allowed.append((getattr(nodes, name), f"omegaconf.nodes.{name}"))
    return allowed


def described() -> str:
    """One line for error messages: what the allowlist holds."""
    return ("numpy scalars, arrays and dtypes, argparse.Namespace, OmegaConf configs, paths, dates, "
            "builtin containers")
