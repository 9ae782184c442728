"""Files the CLI and the editor write: labelled θ × α grids, PNGs with metadata, animations.

Every file goes to a temporary name in the same folder and is ``os.replace``'d into place, so
a killed run never leaves a half-written output. A PNG carries its parameters twice: as JSON in
the PNG text chunk ``"vslerp"`` and in a ``.json`` sidecar beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from vslerp.stats.files import atomic_write

__all__ = ["PNG_KEY", "make_grid", "parse_values", "read_png_metadata", "save_animation",
           "save_json",
           "save_png"]

PNG_KEY = "vslerp"  # PNG text chunk holding the JSON metadata
_MAX_VALUES = 1000  # more values than this on one axis is a typo, not a grid


def parse_values(text: str, name: str) -> list[float]:
    """Parse ``"0,0.5,1"`` or ``"start:stop:count"`` (inclusive, like ``numpy.linspace``).

    Raises ValueError naming ``name`` and the text received.
    """
    raw = str(text).strip()
    if not raw:
        raise ValueError(f"{name}: empty list of values")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: range must be start:stop:count, got {raw!r}")
        try:
            start, stop = float(parts[0]), float(parts[1])
            count = int(parts[2])
        except ValueError:
            raise ValueError(f"{name}: range must be start:stop:count with numbers and an "
                             f"integer count, got {raw!r}") from None
        if count < 1 or count > _MAX_VALUES:
            raise ValueError(f"{name}: count must be 1..{_MAX_VALUES}, got {count} in {raw!r}")
        if count == 1:
            values = [start]
        else:
            step = (stop - start) / (count - 1)
            values = [start + i * step for i in range(count - 1)] + [stop]
        values = [round(v, 12) + 0.0 for v in values]  # 0.30000000000000004 → 0.3; -0.0 → 0.0
    else:
        values = []
        for item in raw.split(","):
            item = item.strip()
            try:
                values.append(float(item))
            except ValueError:
                raise ValueError(f"{name}: {item!r} is not a number in {raw!r} (use "
                                 "comma-separated numbers or start:stop:count)") from None
        if len(values) > _MAX_VALUES:
            raise ValueError(f"{name}: at most {_MAX_VALUES} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: values must be finite, got {raw!r}")
    return values


def _font(size: int):
    """(font, greek): DejaVu Sans (matplotlib's, or the system's) has θ and α; Pillow's
    built-in font does not, so with it the labels are spelled ``theta``/``alpha``."""
    candidates = ["DejaVuSans.ttf"]
    try:
        import matplotlib

        candidates.insert(0, str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"))
    except ImportError:
        pass
    for name in candidates:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), False  # Pillow ≥ 10.1: scalable built-in font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default(), False


def _fmt(value: float) -> str:
    return f"{value:g}"


def make_grid(images: Sequence[Image.Image], thetas: Sequence[float], alphas: Sequence[float],
              labels: bool = True) -> Image.Image:
    """θ rows × α columns of equal-size cells (row-major ``images``), with axis labels.

    Labels: ``α = …`` above each column, ``θ = …`` left of each row. Without labels the grid
    is exactly ``(len(alphas)·w, len(thetas)·h)``; with them a top and a left margin are added.
    """
    rows, cols = len(thetas), len(alphas)
    if rows < 1 or cols < 1:
        raise ValueError(f"make_grid needs at least one θ and one α, got {rows}×{cols}")
    if len(images) != rows * cols:
        raise ValueError(f"make_grid: {len(images)} images for a {rows}×{cols} grid")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("make_grid: all cells must have the same size")
    if labels:
        size = max(12, min(32, round(min(w, h) * 0.16)))
        font, greek = _font(size)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        theta, alpha = ("θ", "α") if greek else ("theta", "alpha")
        row_text = [f"{theta} = {_fmt(t)}" for t in thetas]
        col_text = [f"{alpha} = {_fmt(a)}" for a in alphas]

        def _box(text):
            left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
            return right - left, bottom - top

        pad = max(4, size // 3)
        left = max(_box(t)[0] for t in row_text) + 2 * pad
        top = max(_box(t)[1] for t in col_text + row_text) + 2 * pad
    else:
        left = top = 0
    grid = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB"), (left + c * w, top + r * h))
    if labels:
        draw = ImageDraw.Draw(grid)
        for c, text in enumerate(col_text):
            draw.text((left + c * w + w / 2, top / 2), text, fill="black", font=font, anchor="mm")
        for r, text in enumerate(row_text):
            draw.text((left / 2, top + r * h + h / 2), text, fill="black", font=font, anchor="mm")
    return grid


def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")


def save_png(image: Image.Image, path, metadata: dict, overwrite: bool = False,
             sidecar: bool = True) -> Path:
    """Write ``image`` as PNG with ``metadata`` as JSON in text chunk ``"vslerp"`` and (unless
    ``sidecar=False``) in ``path.with_suffix(".json")``. Both atomic; refuses existing files
    unless ``overwrite``.
    """
    path = Path(path)
    _check_new(path, overwrite)
    if sidecar:
        _check_new(path.with_suffix(".json"), overwrite)
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, text)
    if sidecar:
        save_json(metadata, path.with_suffix(".json"), overwrite=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def save_json(metadata: dict, path, overwrite: bool = False) -> Path:
    """Write ``metadata`` as an indented JSON file, atomically (a sidecar)."""
    path = Path(path)
    _check_new(path, overwrite)
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def read_png_metadata(path) -> dict:
    """The JSON metadata of a PNG written by :func:`save_png` (ValueError if it has none)."""
    path = Path(path)
    with Image.open(path) as image:
        image.load()
        text = image.text.get(PNG_KEY) if hasattr(image, "text") else None
    if text is None:
        raise ValueError(f"{path} has no {PNG_KEY!r} metadata chunk")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: {PNG_KEY!r} metadata is not valid JSON ({err})") from None


def save_animation(frames: Sequence[Image.Image], path, fps: float = 8, pingpong: bool = False,
                   overwrite: bool = True) -> Path:
    """Write ``frames`` as ``.gif`` (looping) or ``.mp4`` (H.264 via imageio-ffmpeg), atomically.

    ``pingpong`` appends the frames backwards without repeating the ends (a, b, c, b), so the
    loop goes there and back. MP4 frame sizes are padded to even numbers for yuv420p.
    """
    import imageio.v3 as iio
    import numpy as np

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"animation must be .gif or .mp4, got {path}")
    if not frames:
        raise ValueError("save_animation needs at least one frame")
    if not (fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    _check_new(path, overwrite)
    frames = list(frames)
    if pingpong and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    arrays = np.stack([np.asarray(f.convert("RGB")) for f in frames])  # (F, H, W, 3) uint8
    if suffix == ".gif":
        def write(tmp):
            iio.imwrite(tmp, arrays, extension=".gif", duration=1000 / fps, loop=0)
    else:
        f, h, w, _ = arrays.shape
        if h % 2 or w % 2:
            arrays = np.pad(arrays, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")

        def write(tmp):
            import imageio.v2 as iio2

            with iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                 pixelformat="yuv420p", macro_block_size=1,
                                 ffmpeg_log_level="error") as writer:
                for frame in arrays:
                    writer.append_data(frame)

    return atomic_write(path, write)
