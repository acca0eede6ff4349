"""Cache the frozen text encoder's prompt embeddings: the text forward leaves every step.

A CASS trial asks the same 14 prompts of every image, so with ``freeze_text_encoder=True`` sam3's
``SAM3VLBackbone.forward_text(captions, device=...)`` (called once per forward by ``Sam3Image.forward`` with
``input.find_text_batch``, the batch's distinct prompts in order) returns the same tensors every step.
:func:`enable_prompt_cache` memoises it per ``(captions, device, autocast state)``.

Why the cached output equals the uncached forward (``tests/test_comm.py`` checks it bit for bit):

- sam3's text encoder (``VETextEncoder``: CLIP-style ``TextTransformer`` with ``nn.MultiheadAttention``
  at dropout 0, LayerNorm, GELU, and a linear ``resizer``) has no dropout and no other randomness, so
  training and eval mode compute the same function (activation checkpointing only recomputes it);
  :func:`enable_prompt_cache` refuses a language backbone holding a non-zero dropout.
- All its parameters are frozen (it refuses otherwise), so the outputs carry no autograd graph; the cache
  keeps detached tensors and hands each caller a fresh dict (sam3 adds keys to the dict it gets).
- Weights changed in place after caching (a checkpoint loaded with ``load_state_dict``) bump the
  parameters' version counters, which are part of the cache's validity check: the cache then refills.

Calls with ``input_boxes`` or ``additional_text`` (not used by the image model's training step) bypass it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

MAX_ENTRIES = 64  # distinct prompt lists kept (a CASS trial has one per chunk layout)


def dropout_modules(module: nn.Module) -> list[str]:
    """Names of the submodules of ``module`` that would randomise its output in training mode."""
    found = []
    for name, sub in module.named_modules():
        p = getattr(sub, "p", None) if isinstance(sub, nn.modules.dropout._DropoutNd) else getattr(sub, "dropout", 0.0)
        if isinstance(p, (int, float)) and p > 0:
            found.append(name or type(sub).__name__)
    return found


class PromptEmbeddingCache:
    """A memoising stand-in for ``backbone.forward_text`` (same signature, same outputs).

    Attributes: ``hits`` and ``misses`` count the calls answered from the cache and by the text encoder.
    """

    def __init__(self, forward_text: Callable[..., dict[str, torch.Tensor]], language: nn.Module,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._forward_text = forward_text
        self._params = list(language.parameters())
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._versions = self._weights_version()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self._params)

    def __call__(self, captions: Sequence[str], input_boxes: Any = None, additional_text: Any = None,
                 device: torch.device | str = "cuda") -> dict[str, torch.Tensor]:
        if input_boxes is not None or additional_text is not None:
            return self._forward_text(captions, input_boxes, additional_text, device)
        versions = self._weights_version()
        if versions != self._versions:  # weights changed in place since the entries were computed
            self._entries.clear()
            self._versions = versions
        device_type = torch.device(device).type
        autocast = torch.is_autocast_enabled(device_type)
        key = (tuple(captions), str(torch.device(device)), autocast,
               torch.get_autocast_dtype(device_type) if autocast else None)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            with torch.no_grad():
                entry = {k: v.detach() for k, v in self._forward_text(captions, device=device).items()}
            self._entries[key] = entry
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        return dict(entry)


def enable_prompt_cache(model: nn.Module) -> PromptEmbeddingCache:
    """Memoise ``model.backbone.forward_text`` (a sam3 ``Sam3Image``, unwrapped); return the cache.

    Call after the weights are loaded and the text encoder frozen (:func:`trainables.model.freeze_text_encoder`)
    and after the model has moved to its device. Raises ``ValueError`` when a language-backbone parameter
    is trainable or a dropout in it is non-zero (the cached output would then differ from the forward).
    """
    backbone = model.backbone
    language = backbone.language_backbone
    trainable = [n for n, p in language.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"prompt cache needs a frozen text encoder; trainable: {trainable[:3]}...")
    random = dropout_modules(language)
    if random:
        raise ValueError(f"prompt cache needs a deterministic text encoder; dropout in {random[:3]}")
    disable_prompt_cache(model)
    cache = PromptEmbeddingCache(backbone.forward_text, language)
    backbone.forward_text = cache  # instance attribute: shadows the method Sam3Image.forward calls
    return cache


def disable_prompt_cache(model: nn.Module) -> None:
    """Undo :func:`enable_prompt_cache` (no-op when not enabled)."""
    if isinstance(model.backbone.__dict__.get("forward_text"), PromptEmbeddingCache):
        del model.backbone.forward_text
