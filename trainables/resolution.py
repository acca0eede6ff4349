"""Change the input resolution of a built sam3 image model (e.g. 1008 -> 672) the way sam3 itself would.

What depends on the resolution in ``Sam3Image`` (sam3 0.1.4):

- the ViT blocks with global attention (``Block.window_size == 0``): ``attn.input_size`` (the token grid)
  and the persistent RoPE buffer ``attn.freqs_cis`` of shape (grid^2, head_dim / 2). sam3 computes it
  with interpolation, positions scaled by ``rope_pt_size / grid`` (``vitdet.py:421-457``), so it is
  recomputed with sam3's own ``Attention._setup_rope_freqs()``, never with a plain RoPE formula.
  Windowed blocks always see (window, window) and do not change; the absolute ``pos_embed`` is tiled
  at forward time.
- the decoder's boxRPB coordinate cache (``compilable_cord_cache``, ``coord_cache``, ``decoder.py:277-284``).
- ``PositionEmbeddingSine.cache`` (filled for the build resolution, ``position_encoding.py:37-50``);
  it is keyed by feature size, so it is cleared and refills lazily on the input's device.

Order in training: build -> load checkpoint -> :func:`set_resolution` -> DDP.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from common.errors import InputError

_NATIVE_ATTR = "cass_native_resolution"


def _vitdet():
    from sam3.model import vitdet

    return vitdet


def global_attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The ``Attention`` modules of the ViT blocks that attend globally, by qualified name."""
    vitdet = _vitdet()
    return {f"{name}.attn": block.attn for name, block in model.named_modules()
            if isinstance(block, vitdet.Block) and block.window_size == 0}


def _trunk_geometry(model: nn.Module) -> tuple[int, int]:
    """(patch size, largest attention window) of the model's ViT."""
    vitdet = _vitdet()
    vits = [m for m in model.modules() if isinstance(m, vitdet.ViT)]
    if len(vits) != 1:
        raise ValueError(f"expected one sam3 ViT in the model, found {len(vits)}")
    vit = vits[0]
    patch = vit.patch_embed.proj.kernel_size[0]
    window = max(block.window_size for block in vit.blocks)
    return patch, window


def patch_size(model: nn.Module) -> int:
    """The ViT's patch size in px (14 for sam3)."""
    return _trunk_geometry(model)[0]


def current_resolution(model: nn.Module) -> int:
    """The input size in px the model is currently set up for."""
    attn = next(iter(global_attention_blocks(model).values()))
    return attn.input_size[0] * patch_size(model)


def mark_native_resolution(model: nn.Module, px: int) -> None:
    """Record the resolution the model was built at (the grid its checkpoints carry)."""
    setattr(model, _NATIVE_ATTR, px)


def native_resolution(model: nn.Module) -> int:
    """The build resolution recorded by :func:`mark_native_resolution` (or by the first
    :func:`set_resolution`); else the current one."""
    return getattr(model, _NATIVE_ATTR, None) or current_resolution(model)


def check_resolution(model: nn.Module, px: int) -> None:
    """Refuse a size that is not a positive multiple of the patch; warn when windows need padding."""
    patch, window = _trunk_geometry(model)
    if not isinstance(px, int) or isinstance(px, bool) or px <= 0 or px % patch:
        raise InputError(f"resolution {px!r} px is not a positive multiple of the patch size {patch} "
                         f"(for example {16 * patch}, {24 * patch}, {48 * patch})")
    if window and px % (window * patch):
        warnings.warn(f"resolution {px} px is not a multiple of {window * patch} (window {window} x patch "
                      f"{patch}): every attention window gets padded, which costs compute", stacklevel=3)


def rope_table(attn: nn.Module, grid: int) -> torch.Tensor:
    """sam3's RoPE table of a global-attention block for a ``grid`` x ``grid`` token grid.

    Runs the block's own ``_setup_rope_freqs()`` and restores the block afterwards.
    """
    saved_size, saved_table = attn.input_size, attn.freqs_cis
    try:
        attn.input_size = (grid, grid)
        attn._setup_rope_freqs()
        return attn.freqs_cis.to(saved_table.device)
    finally:
        attn.input_size = saved_size
        attn.freqs_cis = saved_table


def set_resolution(model: nn.Module, px: int) -> None:
    """Set the model up for ``px`` x ``px`` inputs (in place); equivalent to building it at ``px``.

    Call it once the model is on its final device: the decoder's coordinate cache is a plain attribute
    that ``model.to()`` does not move (sam3 keeps it outside the buffers).
    """
    check_resolution(model, px)
    mark_native_resolution(model, native_resolution(model))  # a model from sam3's builder: remember 1008
    patch, _ = _trunk_geometry(model)
    grid = px // patch
    for attn in global_attention_blocks(model).values():
        if attn.use_rel_pos:
            raise NotImplementedError("relative-position parameters depend on the grid; sam3's image model has none")
        table = rope_table(attn, grid)
        attn.input_size = (grid, grid)
        attn.freqs_cis = table
    _refresh_caches(model, grid)


def _refresh_caches(model: nn.Module, grid: int) -> None:
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine

    device = next(model.parameters()).device
    for module in model.modules():
        if isinstance(module, PositionEmbeddingSine):
            module.cache.clear()
        elif isinstance(module, TransformerDecoder) and module.boxRPB != "none":
            module.compilable_cord_cache = module._get_coords(grid, grid, device)
            module.compilable_stored_size = (grid, grid)
            module.coord_cache.clear()
