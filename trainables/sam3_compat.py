"""Every patch this project applies around ``sam3`` 0.1.4, in one place.

sam3 assumes a CUDA machine and a loaded checkpoint. Each patch below names the sam3 line it works
around and changes nothing on a machine where sam3's assumption holds:

1. ``model/position_encoding.py:47`` -- ``PositionEmbeddingSine.__init__`` precomputes its cache on
   ``device="cuda"`` when ``precompute_resolution`` is set (the builder sets 1008).
2. ``model/decoder.py:281`` -- ``TransformerDecoder.__init__`` builds the boxRPB coordinate cache on
   ``device="cuda"`` when ``resolution``/``stride`` are given.
   Patches 1 and 2 run the constructor under :class:`_CudaToCpu`, which sends explicit ``"cuda"``
   allocations to the CPU when CUDA is absent (``trainables.resolution`` later moves the caches to the
   model's device).
3. ``model/geometry_encoders.py:659`` -- ``SequenceGeometryEncoder._encode_boxes`` calls
   ``pin_memory()`` on every forward, which fails without an accelerator: it becomes a no-op there.
4. ``train/loss/loss_fns.py:134,153`` -- ``sigmoid_focal_loss`` defaults to a Triton GPU kernel: tensors
   that are not on CUDA use sam3's own torch implementation (``triton=False``) instead.

:func:`init_empty_parameters` is the fifth workaround: ``model/text_encoder_ve.py:196,218`` create
``TextTransformer.positional_embedding`` and ``text_projection`` with ``torch.empty`` and never
initialise them (a checkpoint normally fills them); random-init models must call it.

The sixth is applied by :func:`trainables.model.configure_activation_checkpointing`: under bf16 autocast,
the recompute of ``model/text_encoder_ve.py:139``'s checkpointed text blocks records differently shaped tensors than their
forward (the attention mask (1, 1, 32, 32) against (14, 16, 32, 32); measured on an H200 with torch 2.11,
the bare sam3 loop fails the same way), and ``torch.utils.checkpoint`` raises ``CheckpointError``. The text
encoder's activations are small (14 prompts x 32 tokens), so it runs without checkpointing in bf16.

8. Triton. ``model/edt.py``, ``train/loss/sigmoid_focal_loss.py`` and ``perflib/triton/*.py`` import
   ``triton`` at module level, and the image model's import chain reaches ``edt.py`` (through
   ``model/sam3_tracker_utils.py``). Windows has no official Triton wheel (sam3 issue #154), so without it
   nothing of sam3 imports. :func:`provide_triton` (run by ``import trainables``) installs a stand-in module
   when ``triton`` cannot be imported: sam3's modules import, and running one of its Triton kernels raises a
   clear error instead. :func:`apply` then routes every Triton path sam3 has to its torch/CPU implementation,
   whatever the device: the focal loss (``triton=False``), mask NMS (``perflib/nms.py:66`` ->
   ``generic_nms_cpu``), connected components (``perflib/connected_components.py:77`` ->
   ``connected_components_cpu``) and the tracker's distance transform (``model/sam3_tracker_utils.py:178``
   -> SciPy's ``distance_transform_edt``). With Triton installed nothing changes but patch 4.

7. ``model/encoder.py:440`` and ``model/decoder.py:384,527`` assert activation checkpointing in training mode
   (a memory policy for 1008 px on GPUs, not a correctness need: the same layers run unchecked in eval).
   ``activation_ckpt_wrapper``, as those two modules import it, is wrapped to run a module marked by
   :func:`skip_required_checkpointing` without checkpointing; unmarked modules are untouched. The trial's
   ``activation_checkpointing: none`` marks the fusion encoder and decoder
   (``trainables.model.configure_activation_checkpointing``).

:func:`apply` is idempotent and is called by ``trainables.model.build_model``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_APPLIED_MARK = "_cass_sam3_compat"
_SKIP_CHECKPOINT_MARK = "_cass_skip_act_ckpt"


class _CudaToCpu(TorchFunctionMode):
    """Turn an explicit ``device="cuda"`` of a factory call into the CPU (only used when CUDA is absent)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)


class _NoPinMemory(TorchFunctionMode):
    """Make ``Tensor.pin_memory()`` return the tensor itself (only used without an accelerator)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        if func is torch.Tensor.pin_memory:
            return args[0]
        return func(*args, **(kwargs or {}))


def _has_accelerator() -> bool:
    return torch.accelerator.is_available()


def _cuda_constructor_on_cpu(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a constructor so that its hard-coded "cuda" allocations go to the CPU when CUDA is absent."""

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            init(self, *args, **kwargs)
            return
        with _CudaToCpu():
            init(self, *args, **kwargs)

    return wrapper


def _pin_memory_only_with_accelerator(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method so that ``pin_memory()`` inside it is skipped when there is no accelerator."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _has_accelerator():
            return method(*args, **kwargs)
        with _NoPinMemory():
            return method(*args, **kwargs)

    return wrapper


def _torch_focal_loss_off_cuda(focal_loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap sam3's ``sigmoid_focal_loss`` so that non-CUDA inputs use its torch path, not Triton."""

    @functools.wraps(focal_loss)
    def wrapper(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not inputs.is_cuda:
            kwargs["triton"] = False
        return focal_loss(inputs, *args, **kwargs)

    return wrapper


class _MissingTriton:
    """Stands in for any object of the ``triton`` package when it is not installed: sam3's module-level uses
    (``@triton.jit``, ``@triton.autotune(...)``, ``tl.constexpr`` annotations, ``kernel[grid]``) succeed;
    running a kernel raises :class:`RuntimeError` naming it."""

    def __init__(self, name: str, kernel: bool = False) -> None:
        self._name, self._kernel = name, kernel

    def __getattr__(self, attr: str) -> "_MissingTriton":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _MissingTriton(f"{self._name}.{attr}")

    def __getitem__(self, key: Any) -> "_MissingTriton":
        return _MissingTriton(self._name, kernel=True)

    def __call__(self, *args: Any, **kwargs: Any) -> "_MissingTriton":
        if self._kernel:
            raise RuntimeError(f"sam3 tried to run the Triton kernel {self._name}, but triton is not installed "
                               "(trainables.sam3_compat routes the paths it knows to torch; this one is new)")
        if len(args) == 1 and callable(args[0]) and not kwargs:  # a decorator: the result is the kernel
            return _MissingTriton(getattr(args[0], "__qualname__", self._name), kernel=True)
        return _MissingTriton(f"{self._name}(...)")


class _MissingTritonModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _MissingTriton(f"{self.__name__}.{attr}")


#: Whether the real ``triton`` package is importable (set by :func:`provide_triton`).
TRITON_AVAILABLE = True


def provide_triton() -> bool:
    """Make sam3's modules importable where Triton is not installed (patch 8); return whether it is installed.

    The stand-in is visible only while sam3's four Triton modules are imported, then removed again, so that
    torch (whose inductor takes an importable ``triton`` for the real one) still finds none.
    """
    global TRITON_AVAILABLE
    if not TRITON_AVAILABLE or "sam3.model.edt" in sys.modules:
        return TRITON_AVAILABLE
    if _triton_installed():
        return True
    TRITON_AVAILABLE = False
    from torch.utils._triton import has_triton_package

    has_triton_package()  # cached (False) before the stand-in exists
    for module in ("torchvision", "torch._inductor.runtime.triton_helpers"):  # torch's own look for triton,
        importlib.import_module(module)  # made while the stand-in is absent (sam3 imports them too)
    saved = {name: sys.modules.get(name, _ABSENT) for name in ("triton", "triton.language")}
    triton = _MissingTritonModule("triton", "stand-in: triton is not installed (trainables.sam3_compat)")
    triton.language = _MissingTritonModule("triton.language")
    sys.modules["triton"], sys.modules["triton.language"] = triton, triton.language
    try:
        for module in _SAM3_TRITON_MODULES:
            importlib.import_module(module)
    finally:
        for name, value in saved.items():
            if value is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return False


def _triton_installed() -> bool:
    """Whether ``import triton`` would find the package (without importing it: that takes a while)."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is not None
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


_ABSENT = object()
#: sam3's modules that import triton at module level (sam3 0.1.4).
_SAM3_TRITON_MODULES = ("sam3.model.edt", "sam3.train.loss.sigmoid_focal_loss",
                        "sam3.perflib.triton.connected_components", "sam3.perflib.triton.nms")


def _torch_focal_loss_without_triton(focal_loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """sam3's ``sigmoid_focal_loss`` on its torch path on every device (Triton absent)."""

    @functools.wraps(focal_loss)
    def wrapper(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs["triton"] = False
        return focal_loss(inputs, *args, **kwargs)

    return wrapper


def _on_cpu(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run a sam3 function whose CUDA path may need Triton on CPU copies of its tensor arguments, and move the
    tensors it returns back to the first argument's device."""

    @functools.wraps(function)
    def wrapper(first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        device = first.device
        if device.type == "cpu":
            return function(first, *args, **kwargs)
        moved = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        result = function(first.cpu(), *moved, **kwargs)
        if isinstance(result, tuple):
            return tuple(r.to(device) if isinstance(r, torch.Tensor) else r for r in result)
        return result.to(device)

    return wrapper


def edt_cpu(data: torch.Tensor) -> torch.Tensor:
    """sam3's ``edt_triton`` on any device through SciPy: for each (H, W) image of a (B, H, W) batch, the
    Euclidean distance of every non-zero pixel to the nearest zero pixel (0 on zero pixels)."""
    from scipy import ndimage

    masks = data.detach().cpu().numpy()
    out = torch.stack([torch.from_numpy(ndimage.distance_transform_edt(m)).float() for m in masks])
    return out.to(data.device)


def _checkpoint_unless_skipped(
        wrapper_factory: Callable[[Any], Callable[..., Any]]) -> Callable[[Any], Callable[..., Any]]:
    """Wrap sam3's ``activation_ckpt_wrapper`` so that modules marked by :func:`skip_required_checkpointing`
    run as sam3 runs them in eval (``act_ckpt_enable=False``); every other module is wrapped as before."""

    @functools.wraps(wrapper_factory)
    def factory(module: Any) -> Callable[..., Any]:
        wrapped = wrapper_factory(module)
        if not getattr(module, _SKIP_CHECKPOINT_MARK, False):
            return wrapped

        def unchecked(*args: Any, act_ckpt_enable: bool = True, **kwargs: Any) -> Any:
            return wrapped(*args, act_ckpt_enable=False, **kwargs)

        return unchecked

    return factory


def skip_required_checkpointing(module: nn.Module, skip: bool) -> None:
    """Mark (``skip`` True) or unmark ``module`` and its submodules for patch 7: run without the activation
    checkpointing sam3 asserts in training. Needs :func:`apply` (``build_model`` calls it)."""
    for sub in module.modules():
        setattr(sub, _SKIP_CHECKPOINT_MARK, skip)


def _patch(owner: Any, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``owner.name`` by ``wrap(owner.name)`` once (a second call leaves it alone)."""
    original = getattr(owner, name)
    if getattr(original, _APPLIED_MARK, False):
        return
    patched = wrap(original)
    setattr(patched, _APPLIED_MARK, True)
    setattr(owner, name, patched)


def apply() -> None:
    """Install patches 1-4, 7 and (without Triton) 8 of this module's docstring. Safe to call any number of
    times."""
    from sam3.model import decoder, encoder
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.train.loss import loss_fns

    _patch(PositionEmbeddingSine, "__init__", _cuda_constructor_on_cpu)
    _patch(TransformerDecoder, "__init__", _cuda_constructor_on_cpu)
    _patch(SequenceGeometryEncoder, "_encode_boxes", _pin_memory_only_with_accelerator)
    _patch(loss_fns, "sigmoid_focal_loss",
           _torch_focal_loss_off_cuda if TRITON_AVAILABLE else _torch_focal_loss_without_triton)
    _patch(encoder, "activation_ckpt_wrapper", _checkpoint_unless_skipped)
    _patch(decoder, "activation_ckpt_wrapper", _checkpoint_unless_skipped)
    if not TRITON_AVAILABLE:
        from sam3.model import sam3_tracker_utils
        from sam3.perflib import connected_components, nms

        _patch(nms, "generic_nms", lambda _: _on_cpu(nms.generic_nms_cpu))
        _patch(connected_components, "connected_components",
               lambda _: _on_cpu(connected_components.connected_components_cpu))
        _patch(sam3_tracker_utils, "edt_triton", lambda _: edt_cpu)


def init_empty_parameters(model: nn.Module) -> list[str]:
    """Initialise the parameters sam3 leaves as ``torch.empty``; return their qualified names.

    ``TextTransformer.positional_embedding`` gets normal(std=0.01) and ``text_projection`` normal(std=
    width**-0.5), as CLIP initialises them (``model/text_encoder_ve.py:196,218`` never do). Uses the
    global torch RNG, so seed it first for a reproducible model.
    """
    from sam3.model.text_encoder_ve import TextTransformer

    names = []
    for prefix, module in model.named_modules():
        if not isinstance(module, TextTransformer):
            continue
        with torch.no_grad():
            nn.init.normal_(module.positional_embedding, std=0.01)
            names.append(f"{prefix}.positional_embedding")
            if isinstance(module.text_projection, nn.Parameter):
                nn.init.normal_(module.text_projection, std=module.width**-0.5)
                names.append(f"{prefix}.text_projection")
    return names
