"""Tiled decoding for decoders diffusers does not tile (Kandinsky 2.2's movq, a VQModel).

diffusers' ``VQModel`` inherits ``enable_tiling()`` but has no tiled decode (it raises
``NotImplementedError``). This is the scheme of diffusers' ``AutoencoderKL.tiled_decode``:
overlapping latent tiles decoded one at a time, overlaps blended by linear ramps — so the
decoder's peak activation memory is that of one tile, whatever the image size. Like diffusers'
VAE tiling it is an approximation near the seams (group norms and attention see one tile).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["tiled_decode"]


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size): every ``stride``, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, fade_in: int, fade_out: int, device, dtype) -> torch.Tensor:
    """(length,) weights rising over ``fade_in`` and falling over ``fade_out`` samples, all > 0."""
    weight = torch.ones(length, device=device, dtype=dtype)
    if fade_in:
        weight[:fade_in] = (torch.arange(fade_in, device=device, dtype=dtype) + 0.5) / fade_in
    if fade_out:
        weight[length - fade_out :] = torch.minimum(
            weight[length - fade_out :],
            (torch.arange(fade_out, 0, -1, device=device, dtype=dtype) - 0.5) / fade_out)
    return weight


def tiled_decode(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, scale: int,
                 tile: int = 64, overlap: float = 0.25) -> torch.Tensor:
    """Decode latents (B, C, h, w) tile by tile into images (B, 3, h·scale, w·scale).

    decode: latents (B, C, th, tw) → images (B, 3, th·scale, tw·scale), e.g.
    ``lambda z: movq.decode(z, force_not_quantize=True).sample``. tile: tile side in latent
    pixels (64 → 512 px for movq); overlap: the share of a tile shared with its neighbour,
    blended linearly. Latents no larger than one tile are decoded in one call (exactly
    ``decode(latents)``). Blending and the sums are float32.
    """
    if not isinstance(tile, int) or tile < 2:
        raise ValueError(f"tile must be an int >= 2 (latent pixels), got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    height, width = latents.shape[-2:]
    if height <= tile and width <= tile:
        return decode(latents)
    stride = max(1, round(tile * (1.0 - overlap)))
    rows, cols = _starts(height, tile, stride), _starts(width, tile, stride)
    out = weight = out_dtype = None
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            part = latents[..., top : top + tile, left : left + tile].contiguous()  # views take slow convs
            image = decode(part)  # (B, 3, th·scale, tw·scale)
            out_dtype, image = image.dtype, image.float()
            th, tw = image.shape[-2:]
            if out is None:
                out = torch.zeros(*image.shape[:2], height * scale, width * scale, device=image.device)
                weight = torch.zeros(height * scale, width * scale, device=image.device)
            # Fade over the overlap with the previous / next tile (none at the image border).
            fade_top = (rows[i - 1] + tile - top) * scale if i else 0
            fade_bottom = (top + tile - rows[i + 1]) * scale if i + 1 < len(rows) else 0
            fade_left = (cols[j - 1] + tile - left) * scale if j else 0
            fade_right = (left + tile - cols[j + 1]) * scale if j + 1 < len(cols) else 0
            w = (_ramp(th, fade_top, fade_bottom, image.device, torch.float32)[:, None]
                 * _ramp(tw, fade_left, fade_right, image.device, torch.float32)[None, :])  # (th, tw)
            y, x = top * scale, left * scale
            out[..., y : y + th, x : x + tw] += image * w
            weight[y : y + th, x : x + tw] += w
    return (out / weight).to(out_dtype)
