"""The Python globals a training checkpoint's plain metadata needs, allowed for ``torch.load(weights_only=True)``.

Training scripts save more than tensors next to the weights: the epoch as a numpy integer, the numpy RNG state
(an array), ``argparse.Namespace`` arguments, a Hydra/OmegaConf config, paths, a timestamp. torch's weights-only
unpickler refuses every global it does not know, so such a file is refused whole. :func:`metadata_globals` lists
the globals of that metadata (``torch.serialization.safe_globals`` takes the list); everything else is still
refused, by name. The surgery reads only the weights, so numpy and OmegaConf objects are never built: their
names load as :class:`Inert` records of what the file said (a crafted numpy dtype state can otherwise make numpy
read the file's bytes as object pointers):

- numpy, as :class:`Inert`: scalars (``numpy._core.multiarray.scalar``, and ``numpy.core.multiarray.scalar`` as
  files written with numpy 1.x name it), arrays (``_reconstruct``, ``ndarray``), ``numpy.dtype`` and its classes
  (``numpy.dtypes.Float64DType``, ...) and the scalar types (``numpy.float32``, ...); not ``numpy.random``
  generator objects;
- ``argparse.Namespace``; ``datetime`` dates, times and durations; ``torch.torch_version.TorchVersion``;
- ``collections.defaultdict`` and the builtin types (``dict``, ``list``, ``int``, ...), which OmegaConf's
  metadata and protocol-2 pickles of sets, ranges and slices name;
- paths: ``pathlib.PosixPath`` and ``WindowsPath`` (and ``pathlib._local.*`` of Python 3.13) become the pure
  paths ``PurePosixPath`` / ``PureWindowsPath``: a file saved on Windows loads on Linux and back, and no
  filesystem method is reachable;
- OmegaConf, as :class:`Inert`: ``DictConfig``, ``ListConfig``, their metadata and value nodes, ``typing.Any``
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
import pathlib
import typing
from collections.abc import Callable

import torch

Global = tuple[Callable, str]


class Inert:
    """A metadata object the surgery never uses, as the file described it: the arguments and state it was
    pickled with, kept as plain values; nothing of the class it names is built or run."""

    global_name = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.global_name} from the file, not built>"


def _inert(global_name: str) -> Global:
    """An :class:`Inert` class standing for ``global_name``."""
    return type(global_name.rsplit(".", 1)[-1], (Inert,), {"global_name": global_name}), global_name


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
    names = ["numpy.dtype", "numpy.ndarray"]
    for package in ("numpy._core", "numpy.core"):  # numpy 1.x files say numpy.core, numpy 2 files numpy._core
        names += [f"{package}.multiarray.scalar", f"{package}.multiarray._reconstruct"]
    dtype_classes = {type(np.dtype(kind)) for kind in set(np.sctypeDict.values())}
    for cls in sorted(dtype_classes, key=lambda c: c.__name__):
        names += [f"numpy.dtypes.{cls.__name__}", f"numpy.{cls.type.__name__}"]  # e.g. numpy.float32
    return [_inert(name) for name in names]


def _omegaconf_globals() -> list[Global]:
    try:
        from omegaconf import nodes
    except ImportError:
        return []
    names = ["omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.Metadata",
             "omegaconf.base.ContainerMetadata"]
    names += [f"omegaconf.nodes.{name}" for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode",
                                                     "BooleanNode", "BytesNode", "PathNode", "EnumNode",
                                                     "InterpolationResultNode") if hasattr(nodes, name)]
    return [_inert(name) for name in names]


def described() -> str:
    """One line for error messages: what the allowlist holds."""
    return ("numpy scalars, arrays and dtypes, argparse.Namespace, OmegaConf configs, paths, dates, "
            "builtin containers")
