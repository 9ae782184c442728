"""Files the CLI and the editor write: labelled θ × α grids, PNGs with metadata, animations.

Every file goes to a temporary name in the same folder and is ``os.replace``'d into place, so
a killed run never leaves a half-written output. A PNG carries its parameters twice: as JSON in
the PNG text chunk ``"vslerp"`` and in a ``.json`` sidecar beside it (:func:`sidecar_path`).
The image is written first and its sidecar last, so a failed write (a full disk) never leaves a
sidecar describing an image that is not there: on any error both are removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from vslerp.stats.outputs import TEMP_MARK, atomic_write

__all__ = ["FPS_RANGES", "GRID_GAP", "PNG_KEY", "check_fps", "file_sha256", "grid_caption", "make_grid",
           "read_png_metadata", "save_animation", "save_json", "save_png", "sidecar_path"]

PNG_KEY = "vslerp"  # PNG text chunk holding the JSON metadata
# Frame rates each format stores: GIF keeps each frame's delay in 1/100 s (a delay of 1/100 s
# is shown as 1/10 s by browsers, so at most 50 fps; at most 655.35 s a frame); MP4 (H.264)
# takes any rational rate, players need a sane one.
FPS_RANGES = {".gif": (100 / 65535, 50.0), ".mp4": (0.1, 240.0)}


def check_fps(fps, suffix: str, name: str = "fps") -> float:
    """``fps`` if the format of ``suffix`` (.gif, .mp4) can store it, else ``ValueError``."""
    low, high = FPS_RANGES[suffix.lower()]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or fps <= 0:
        raise ValueError(f"{name} must be a number > 0, got {fps!r}")
    if not low <= fps <= high:
        raise ValueError(f"{name} {fps:g} cannot be stored in {suffix.lower()}: "
                         f"{low:.3g} ≤ fps ≤ {high:g}" + (
                             " (GIF stores delays in 1/100 s)" if suffix.lower() == ".gif" else ""))
    return float(fps)


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


def _fmt(value: float, digits: int = 3) -> str:
    """A compact axis label: at most ``digits`` significant digits (-1.33333 → "-1.33")."""
    value = float(value)
    if value == 0:
        return "0"  # also -0.0
    text = f"{value:.{digits}g}"
    if "e" in text:  # 1e+03 → 1e3
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _fmt_all(values: Sequence[float]) -> list[str]:
    """Labels for one axis: 3 significant digits, more only where two values would look equal."""
    for digits in range(3, 8):
        texts = [_fmt(v, digits) for v in values]
        if len(set(texts)) == len(set(float(v) for v in values)):
            return texts
    return texts


_MIN_FONT = 8  # px: labels never get smaller than this
_MAX_FONT = 32  # px


@dataclass
class _Labels:
    """How the axis labels of a grid are drawn (found by :func:`_label_layout`)."""

    font: object  # PIL font
    row_text: list[str]  # left of each row
    col_text: list[str]  # above each column
    corner: str  # left of the column labels ("α =" when the columns show bare values)
    rotated: bool  # column labels drawn vertically (cells too narrow for them)
    left: int  # px, left margin
    top: int  # px, top margin
    pad: int  # px around the labels


def _label_layout(w: int, h: int, thetas, alphas, row_labels=None) -> _Labels:
    """Largest font (≤ 16 % of the cell, 32 px) at which no two labels overlap.

    Column labels must fit the cell width: ``α = -1.33`` at the largest size that fits, else
    the bare values with one ``α =`` in the corner, else (tiny cells) rotated 90°.
    Row labels must fit the cell height; the left margin grows to hold them.
    """
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    preferred = max(12, min(_MAX_FONT, round(min(w, h) * 0.16)))
    gap = max(4, w // 8)  # px at least between neighbouring column labels
    theta_values, alpha_values = _fmt_all(thetas), _fmt_all(alphas)

    def box(text, font):
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    def layout(size, prefix, rotated):
        font, greek = _font(size)
        theta, alpha = ("θ", "α") if greek else ("theta", "alpha")
        row_text = list(row_labels) if row_labels is not None else [f"{theta} = {v}" for v in theta_values]
        col_text = [f"{alpha} = {v}" for v in alpha_values] if prefix else list(alpha_values)
        corner = "" if prefix else f"{alpha} ="
        line = box("θα = -0.123456789" if greek else "thetaalpha = -0.123456789", font)[1]
        if line > h - 2:  # a row label taller than its row
            return None
        widths = [box(t, font)[0] for t in col_text]
        if not rotated and max(widths) > w - gap:
            return None
        if rotated and line > w - gap:
            return None
        pad = max(2, size // 3)
        left = max([box(t, font)[0] for t in row_text] + [box(corner, font)[0] if corner else 0])
        top = max(widths) if rotated else line
        return _Labels(font, row_text, col_text, corner, rotated, left + 2 * pad, top + 2 * pad,
                       pad)

    for prefix, rotated in ((True, False), (False, False), (True, True)):
        for size in range(preferred, _MIN_FONT - 1, -1):
            found = layout(size, prefix, rotated)
            if found is not None:
                return found
    return _Labels(_font(_MIN_FONT)[0], [], [], "", False, 0, 0, 0)  # cells too small for labels


GRID_GAP = 2  # px of white between the cells of a labelled grid (the CLI's)


def make_grid(images: Sequence[Image.Image], thetas: Sequence[float], alphas: Sequence[float],
              labels: bool = True, row_labels: Sequence[str] | None = None, *, gap: int = 0,
              caption: Sequence[str] = ()) -> Image.Image:
    """θ rows × α columns of equal-size cells (row-major ``images``), with axis labels
    (``row_labels``: one text per row instead of ``θ = …``, e.g. a mix's weights).

    Labels: ``α = …`` above each column, ``θ = …`` left of each row, values with 3 significant
    digits, the font fitted to the cells (see :func:`_label_layout`); ``gap`` px of white between
    the cells and ``caption`` (lines, :func:`grid_caption`) in a strip under the grid. Without
    labels the grid is exactly ``(len(alphas)·w, len(thetas)·h)``: no gap, no caption.
    """
    rows, cols = len(thetas), len(alphas)
    if rows < 1 or cols < 1:
        raise ValueError(f"make_grid needs at least one θ and one α, got {rows}×{cols}")
    if len(images) != rows * cols:
        raise ValueError(f"make_grid: {len(images)} images for a {rows}×{cols} grid")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("make_grid: all cells must have the same size")
    spec = _label_layout(w, h, thetas, alphas, row_labels) if labels else None
    gap = max(0, int(gap)) if labels else 0
    left, top = (spec.left, spec.top) if spec else (0, 0)
    width, height = left + cols * w + (cols - 1) * gap, top + rows * h + (rows - 1) * gap
    strip = _caption_lines(list(caption), width) if labels and caption else None
    grid = Image.new("RGB", (width, height + (strip[2] if strip else 0)), "white")
    step_x, step_y = w + gap, h + gap
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB"), (left + c * step_x, top + r * step_y))
    draw = ImageDraw.Draw(grid)
    if strip:
        font, lines, _, line_h, pad = strip
        for k, line in enumerate(lines):
            draw.text((pad, height + pad + k * line_h), line, fill=(40, 40, 40), font=font)
    if spec and spec.row_text:
        font = spec.font
        for r, text in enumerate(spec.row_text):
            draw.text((left / 2, top + r * step_y + h / 2), text, fill="black", font=font, anchor="mm")
        for c, text in enumerate(spec.col_text):
            x = left + c * step_x + w / 2
            if not spec.rotated:
                draw.text((x, top / 2), text, fill="black", font=font, anchor="mm")
                continue
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
            ImageDraw.Draw(mask).text((1 - x0, 1 - y0), text, fill=255, font=font)
            mask = mask.rotate(90, expand=True)  # reads bottom to top
            grid.paste((0, 0, 0), (round(x - mask.width / 2), top - spec.pad - mask.height), mask)
        if spec.corner:  # bare column values: one "α =" before them
            draw.text((left - spec.pad, top / 2), spec.corner, fill="black", font=font, anchor="rm")
    return grid


def _caption_lines(caption: list[str], width: int):
    """(font, wrapped lines, strip height, line height, pad) of a caption under a grid ``width`` px wide."""
    font, _ = _font(max(_MIN_FONT + 2, min(16, width // 36)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(3, font.size // 3) if hasattr(font, "size") else 3
    lines = []
    for text in caption:
        line = ""
        for word in text.split(" "):
            wider = f"{line} {word}" if line else word
            if line and probe.textlength(wider, font=font) > width - 2 * pad:
                lines.append(line)
                line = word
            else:
                line = wider
        lines.append(line)
    x0, y0, x1, y1 = probe.textbbox((0, 0), "Ag|θα", font=font)
    line_h = (y1 - y0) + max(2, pad // 2)
    return font, lines, len(lines) * line_h + 2 * pad, line_h, pad


def grid_caption(meta: dict) -> list[str]:
    """A grid's legend lines from its sidecar (as A1111's X/Y plot): source → target; seed, steps, size, model."""
    def name(ref):
        ref = ref or {}
        if ref.get("kind") == "prompt":
            text = " ".join(str(ref.get("prompt", "")).split())
            return f"\u201c{text if len(text) <= 60 else text[:59] + '…'}\u201d"
        return Path(str(ref.get("path") or ref.get("name") or "image")).name

    model = ("tiny random Kandinsky 2.2 (noise)" if meta.get("tiny_random") else
             Path(str(meta.get("model") or (meta.get("pipeline") or {}).get("decoder") or "?")).name)
    settings = [f"seed {meta.get('seed')}", f"{meta.get('steps')} steps", f"{meta.get('size')} px",
                f"guidance {_fmt(meta['guidance'])}" if meta.get("guidance") is not None else "",
                f"strength {_fmt(meta['strength'])}" if (meta.get("strength") or 1) < 1 else "",
                f"model {model}"]
    return [f"source {name(meta.get('source'))} → target {name(meta.get('target'))}",
            " · ".join(part for part in settings if part)]


def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")


def file_sha256(path) -> str:
    """sha256 of a file's bytes: how metadata names an input image (``--from`` checks it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path) -> Path:
    """The JSON sidecar of an output: ``grid.png`` → ``grid.json``; an animation keeps its
    suffix (``a.gif`` → ``a.gif.json``), so a GIF and an MP4 of one stem never share one."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix.lower() == ".png" else \
        path.with_name(path.name + ".json")


def _write(path: Path, write) -> Path:
    """:func:`atomic_write`, its OSError naming ``path`` (not the temporary file)."""
    try:
        return atomic_write(path, write)
    except OSError as err:
        detail = err.strerror or str(err)
        if err.filename and TEMP_MARK not in Path(str(err.filename)).name:
            detail += f": {err.filename}"
        raise OSError(f"cannot write {path}: {detail}") from err


def _with_sidecar(path: Path, write, metadata) -> Path:
    """Write ``path`` (``write(tmp)``, atomically), then its sidecar ``metadata`` (a dict, or a
    callable taking the written ``path`` and returning it; None: no sidecar), atomically.

    The image first, the sidecar last: when either fails (a full disk, Ctrl-C) neither is left,
    not even an older sidecar, which would describe an image that is no longer there."""
    _write(path, write)
    if metadata is None:
        return path
    try:
        save_json(metadata(path) if callable(metadata) else metadata, sidecar_path(path),
                  overwrite=True)
    except BaseException:
        path.unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
        raise
    return path


def save_png(image: Image.Image, path, metadata: dict, overwrite: bool = False,
             sidecar=True) -> Path:
    """Write ``image`` as PNG with ``metadata`` as JSON in text chunk ``"vslerp"`` and (unless
    ``sidecar=False``) in ``path.with_suffix(".json")``; ``sidecar`` may be a callable taking
    the written PNG's path and returning the sidecar's dict (to record the PNG's sha256).

    The PNG first, the sidecar last, each atomically; on an error neither is left
    (:func:`_with_sidecar`). A killed run leaves at most the PNG, whose text chunk still holds
    its parameters. Refuses an existing PNG unless ``overwrite``.
    """
    path = Path(path)
    _check_new(path, overwrite)
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, text)
    return _with_sidecar(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info),
                         sidecar if callable(sidecar) else metadata if sidecar else None)


def save_json(metadata: dict, path, overwrite: bool = False) -> Path:
    """Write ``metadata`` as an indented JSON file, atomically (a sidecar)."""
    path = Path(path)
    _check_new(path, overwrite)
    text = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    return _write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def read_png_metadata(path) -> dict:
    """The JSON metadata of a PNG written by :func:`save_png` (ValueError if it has none)."""
    path = Path(path)
    with Image.open(path) as image:
        image.load()
        text = image.text.get(PNG_KEY) if hasattr(image, "text") else None
    if text is None:
        raise ValueError(f"{path} has no {PNG_KEY!r} metadata chunk")
    from vslerp.stats.jsonfile import parse_json

    return parse_json(text, f"{path}: its {PNG_KEY!r} metadata")  # not JSON, too deep: one line


def _check_video(tmp: Path, expected: int) -> None:
    """ffmpeg's exit status is not reported by imageio-ffmpeg: a full disk leaves a truncated
    MP4 and no error. Read the file back (ffmpeg counts its frames) before it is committed."""
    import imageio_ffmpeg

    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(tmp)
    except (RuntimeError, OSError):
        frames = 0
    if frames != expected:
        raise OSError(errno.EIO, f"ffmpeg did not finish writing it ({frames} of {expected} "
                      "frames readable; is the disk full?)")


def save_animation(frames: Sequence[Image.Image], path, fps: float = 8, pingpong: bool = False,
                   overwrite: bool = True, metadata: dict | None = None) -> Path:
    """Write ``frames`` as ``.gif`` (looping) or ``.mp4`` (H.264 via imageio-ffmpeg), atomically,
    then (when ``metadata`` is given) its sidecar (:func:`sidecar_path`); on an error neither is
    left.

    ``pingpong`` appends the frames backwards without repeating the ends (a, b, c, b), so the
    loop goes there and back. MP4 frame sizes are padded to even numbers for yuv420p; an MP4 is
    read back before it is committed (:func:`_check_video`).
    """
    import numpy as np

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"animation must be .gif or .mp4, got {path}")
    if not frames:
        raise ValueError("save_animation needs at least one frame")
    check_fps(fps, suffix)
    _check_new(path, overwrite)
    frames = list(frames)
    if pingpong and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    arrays = np.stack([np.asarray(f.convert("RGB")) for f in frames])  # (F, H, W, 3) uint8
    if suffix == ".gif":
        images = [Image.fromarray(a) for a in arrays]

        def write(tmp):  # Pillow itself (as imageio's plugin does): an error leaves no writer open
            images[0].save(tmp, format="GIF", save_all=len(images) > 1,
                           append_images=images[1:], duration=1000 / fps, loop=0)
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
            _check_video(tmp, len(arrays))

    return _with_sidecar(path, write, metadata)
