"""The Gradio editor: vSLERP(source, target, θ, α) (paper Eq. 12) with a cache of embeddings.

Pure callbacks first (:class:`EditorState`, :class:`Editor`), then :func:`build_editor`, the
``gr.Blocks`` layout with explicit inputs, outputs and ``api_name``. Nothing is launched here:
``vslerp ui`` (``vslerp.ui.cmd_ui``) launches it. No geometry or conformity code lives here:
embeddings come from the pipeline's encoders, cells and conformity from ``pipe(...)`` and
``pipe.estimated_conformity`` (the core's Eq. 11 / exact identity).

Uploads reach the callbacks as file paths, undecoded (:func:`checked_image`): the callback
reads the pixel count from the file header, refuses huge images before any pixel is decoded,
hashes the file's bytes for the metadata and decodes with ``vslerp.stats.open_image``
(EXIF-upright RGB), as the pipeline does for paths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import random
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import PIL.Image
import torch

from vslerp.ui.outputs import file_sha256

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "USEFUL_ALPHA", "Editor", "EditorState", "RenderCancelled",
           "Upload", "build_editor", "checked_image", "launch_kwargs", "open_upload"]

MAX_PIXELS = 40_000_000  # uploads above this many pixels are refused (decompression bombs)
MAX_UPLOAD_BYTES = 25_000_000  # launch(max_file_size="25mb"); also the limit for data: URLs
USEFUL_ALPHA = 2.0  # |α| ≤ 2: the paper's useful range (the α slider's); sweeps beyond get a note
MAX_GALLERY = 24  # results kept in a session's gallery
MAX_CELLS = 64  # cells of one sweep
_CACHE_SIZE = 64  # embeddings kept per kind (images, prompts)
_STATS_CACHE_SIZE = 4  # uploaded statistics files kept loaded (each holds a D×D sum)
_REFERENCE_CACHE_SIZE = 8  # reference conformity arrays kept (one per statistics fingerprint)

log = logging.getLogger(__name__)


def _error(message: str):
    import gradio as gr

    return gr.Error(message)


def _warn(message: str) -> None:
    """A yellow toast on the page (a Python warning outside an event)."""
    import gradio as gr

    gr.Warning(message)


class Upload(str):
    """A server path of an uploaded file that remembers the file's original name."""

    orig_name: str | None

    def __new__(cls, path, orig_name: str | None = None):
        self = super().__new__(cls, str(path))
        self.orig_name = orig_name
        return self


def _display_name(upload) -> str | None:
    """What the user calls an upload: its original file name, else the file's own name."""
    if upload is None or isinstance(upload, PIL.Image.Image):
        return None
    return getattr(upload, "orig_name", None) or Path(str(upload)).name


def _mentioning(text: str, path, name: str | None) -> str:
    """``text`` with a server path replaced by the file's name (users never see temp paths)."""
    text = " ".join(str(text).split())
    return text.replace(str(path), repr(name or Path(str(path)).name)) if path else text


def open_upload(path, name: str = "source", max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Open an uploaded image file as EXIF-upright RGB, refusing unreadable files and huge images.

    The pixel count is read from the file header and checked before any pixel is decoded; then
    ``vslerp.stats.open_image`` decodes (CMYK, 16-bit, palette, alpha → RGB). Raises gr.Error.
    """
    from vslerp.stats import UnreadableImage, open_image

    if path is None:
        raise _error(f"No {name} image: upload one (drag and drop, paste or webcam).")
    if isinstance(path, PIL.Image.Image):  # programmatic callers: already decoded
        width, height = path.size
        if width * height > max_pixels:
            raise _error(f"The {name} image is too large: {width}×{height} pixels "
                         f"(at most {max_pixels:,} pixels).")
        return path.convert("RGB")
    label = _display_name(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(str(path)) as header:  # reads the header only
                width, height = header.size
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise _error(f"The {name} image is too large to open (decompression bomb?).") from None
    except PIL.UnidentifiedImageError:
        raise _error(f"The {name} image cannot be read (not an image file).") from None
    except FileNotFoundError:
        raise _error(f"The {name} image is no longer on the server: upload it again.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise _error(f"The {name} image cannot be read ({type(err).__name__}).") from None
    if width * height > max_pixels:
        raise _error(f"The {name} image is too large: {width}×{height} pixels "
                     f"(at most {max_pixels:,} pixels).")
    try:
        return open_image(str(path))
    except UnreadableImage as err:
        raise _error(f"The {name} image cannot be read ({_mentioning(err, path, label)}).") from None


class EditorState:
    """Cache of raw embeddings, shared by every session of one editor (thread-safe).

    Images are keyed by a sha256 of their RGB pixels and size; prompts by (prompt, seed,
    prior steps), since a prompt becomes an image embedding through the seeded prior.
    ``encode_calls`` / ``prompt_calls`` count the encoder / prior runs (cache misses),
    ``decode_calls`` the uploads decoded (a known file is not decoded again).
    """

    def __init__(self, pipe, *, prior_steps: int = 25, cache_size: int = _CACHE_SIZE) -> None:
        self.pipe = pipe
        self.prior_steps = int(prior_steps)
        self.cache_size = int(cache_size)
        self.encode_calls = 0  # image-encoder runs
        self.prompt_calls = 0  # prompt → prior runs
        self.decode_calls = 0  # uploaded files decoded
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompts: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._files: OrderedDict[str, str] = OrderedDict()  # sha256 of a file → of its pixels
        self._lock = threading.Lock()  # guards the caches and the counters
        self.pipe_lock = threading.RLock()  # one pipeline call at a time (statistics are pipe state)

    @staticmethod
    def image_key(image: PIL.Image.Image) -> str:
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
        return digest.hexdigest()

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def image_embedding(self, image: PIL.Image.Image) -> tuple[torch.Tensor, str]:
        """Raw image embedding (D,) float32 of an RGB image and its cache key."""
        key = self.image_key(image)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key], key
        with self.pipe_lock:
            raw = self.pipe.encode_image([image])[0]  # (D,)
        with self._lock:
            self.encode_calls += 1
            self._remember(self._images, key, raw)
        return raw, key

    def upload_embedding(self, upload, name: str) -> tuple[torch.Tensor, dict]:
        """(raw (D,), reference) of an uploaded image file (or a PIL image).

        The reference is the CLI sidecar's ``{"kind": "image", "path", "sha256"}``: path = the
        upload's original file name, sha256 = of the file's bytes; plus ``pixels_sha256`` (the
        cache key). A file seen before (same bytes) is not decoded again while its embedding is
        cached.
        """
        if upload is None or isinstance(upload, PIL.Image.Image):
            raw, key = self.image_embedding(open_upload(upload, name))
            return raw, {"kind": "image", "path": None, "sha256": None, "pixels_sha256": key}
        try:
            file_sha = file_sha256(upload)
        except OSError:
            raise _error(f"The {name} image is no longer on the server: upload it again.") from None
        raw = None
        with self._lock:
            pixels_key = self._files.get(file_sha)
            if pixels_key is not None and pixels_key in self._images:
                self._files.move_to_end(file_sha)
                self._images.move_to_end(pixels_key)
                raw = self._images[pixels_key]
        if raw is None:
            image = open_upload(upload, name)
            with self._lock:
                self.decode_calls += 1
            raw, pixels_key = self.image_embedding(image)
            with self._lock:
                self._remember(self._files, file_sha, pixels_key)
        return raw, {"kind": "image", "path": _display_name(upload), "sha256": file_sha,
                     "pixels_sha256": pixels_key}

    def prompt_embedding(self, prompt: str, seed: int) -> torch.Tensor:
        """Raw image embedding (D,) float32 the prior makes of ``prompt`` with ``seed``.

        The same as ``pipe(source, prompt, generator=torch.Generator().manual_seed(seed))``
        computes internally, so cached and uncached edits agree.
        """
        key = (prompt, int(seed), self.prior_steps)
        with self._lock:
            if key in self._prompts:
                self._prompts.move_to_end(key)
                return self._prompts[key]
        with self.pipe_lock:
            gen = torch.Generator().manual_seed(int(seed))
            raw = self.pipe.prompt_to_image_embedding([prompt], generator=gen,
                                                      num_inference_steps=self.prior_steps)[0]  # (D,)
        with self._lock:
            self.prompt_calls += 1
            self._remember(self._prompts, key, raw)
        return raw


class RenderCancelled(Exception):
    """Raised between denoising steps when whoever asked for the render has gone."""


class Editor:
    """The editor's callbacks (pure functions of their inputs plus the shared cache).

    pipe: a loaded ``VSlerpPipeline``. reference: optional (N, D) raw image embeddings whose
    conformity is the reference distribution of the histogram; it is scored with the same
    statistics as each edit (cached per statistics fingerprint). tiny_random: label results as
    the noise-only smoke test. stats_path: the ``--stats`` file the pipeline started with (for
    the metadata). ``steps_run`` / ``cancelled`` count denoising steps and cancelled renders.
    """

    def __init__(self, pipe, *, reference: torch.Tensor | None = None, tiny_random: bool = False,
                 prior_steps: int = 25, out_dir: str | Path | None = None,
                 stats_path: str | Path | None = None) -> None:
        self.pipe = pipe
        self.state = EditorState(pipe, prior_steps=prior_steps)
        self.tiny_random = tiny_random
        self.default_statistics = pipe.statistics
        self.default_stats_path = str(Path(stats_path).resolve()) if stats_path else None
        self._stats_cache: OrderedDict[str, object] = OrderedDict()
        self._reference_cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()  # guards the caches above and the counters
        self.steps_run = 0  # denoising steps run (all renders)
        self.cancelled = 0  # renders stopped because their page was closed
        self.reference = None if reference is None else torch.as_tensor(reference).float()  # (N, D) raw
        self.reference_conformity = None  # (N,) under the startup statistics
        if self.reference is not None:
            self.reference_conformity = self._reference_conformity(pipe.describe())
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="vslerp-editor-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # -- inputs ---------------------------------------------------------------------------
    def _statistics(self, mean_source: str | None, stats_file) -> tuple[object, str, str | None]:
        """(Statistics, label, path for the metadata) of the chosen mean source."""
        from vslerp.stats import Statistics, load

        if mean_source == "prior clip_mean":
            stats = Statistics.from_prior(self.pipe.prior, model_id=self.pipe.model_ids.get("prior"))
            return stats, "prior clip_mean", None
        if mean_source == "statistics file":
            if not stats_file:
                raise _error("Mean source 'statistics file': upload a .safetensors statistics file "
                             "(Advanced → Statistics file).")
            path, name = str(stats_file), _display_name(stats_file)
            with self._lock:
                stats = self._stats_cache.get(path)
            if stats is None:
                try:
                    stats = load(path)
                except (OSError, ValueError) as err:
                    raise _error(f"Cannot read the statistics file: {_mentioning(err, path, name)}") from None
                with self._lock:
                    self._stats_cache[path] = stats
                    while len(self._stats_cache) > _STATS_CACHE_SIZE:
                        self._stats_cache.popitem(last=False)
            return stats, f"file {name}", name
        label = self.default_statistics.metadata.get("source")
        if self.default_stats_path:
            label = f"{label} {Path(self.default_stats_path).name}"
        return self.default_statistics, f"startup ({label})", self.default_stats_path

    def _target(self, kind: str, target_image, prompt: str | None, seed: int) -> tuple[torch.Tensor, dict]:
        """(raw (D,), reference) of the target.

        kind "prompt" / "image" (the page's Target choice) uses that input only; "auto" (the API)
        takes whichever of the two is given and refuses both.
        """
        prompt = (prompt or "").strip()
        if kind not in ("auto", "prompt", "image"):
            raise _error(f"Target must be 'prompt' or 'image', got {kind!r}.")
        if kind == "auto":
            if target_image is not None and prompt:
                raise _error("Give a target image or a target prompt, not both.")
            kind = "image" if target_image is not None else "prompt"
        if kind == "image":
            if target_image is None:
                raise _error("Target is 'image': upload a target image (or choose Target: prompt).")
            return self.state.upload_embedding(target_image, "target")
        if not prompt:
            raise _error("No target: type a target prompt (or choose Target: image and upload one).")
        return self.state.prompt_embedding(prompt, seed), {"kind": "prompt", "prompt": prompt}

    @staticmethod
    def _seed(seed) -> int:
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise _error(f"The seed must be a whole number, got {seed!r}.") from None
        if not 0 <= seed < 2**63:
            raise _error(f"The seed must be in [0, 2**63), got {seed}.")
        return seed

    def _reference_conformity(self, describe: dict):
        """Conformity (N,) of the reference under the pipeline's current statistics (cached)."""
        key = (describe.get("stats_fingerprint"), describe.get("conformity"))
        with self._lock:
            if key in self._reference_cache:
                self._reference_cache.move_to_end(key)
                return self._reference_cache[key]
        values = self.pipe.estimated_conformity(self.reference).numpy()  # (N,)
        with self._lock:
            self._reference_cache[key] = values
            while len(self._reference_cache) > _REFERENCE_CACHE_SIZE:
                self._reference_cache.popitem(last=False)
        return values

    def _step_callback(self, should_stop):
        def on_step_end(pipe, step, timestep, tensors):
            with self._lock:
                self.steps_run += 1
            if should_stop is not None and should_stop():
                raise RenderCancelled
            return {}

        return on_step_end

    def render(self, source, target_image, prompt, thetas, alphas, seed, steps, guidance, size,
               mean_source=None, stats_file=None, *, target_kind: str = "auto", should_stop=None) -> dict:
        """Run the pipeline on cached embeddings; returns a result dict (images, metadata, ...).

        should_stop: optional callable polled after each denoising step; True stops the render
        (the page that asked for it was closed) with :class:`RenderCancelled` as a gr.Error.
        """
        import gradio as gr

        seed = self._seed(seed)
        size = int(size)
        source_raw, source_ref = self.state.upload_embedding(source, "source")  # (D,)
        target_raw, target_ref = self._target(target_kind, target_image, prompt, seed)  # (D,)
        stats, mean_label, stats_path = self._statistics(mean_source, stats_file)
        with self.state.pipe_lock:
            try:
                try:
                    self.pipe.set_statistics(stats)
                except ValueError as err:
                    raise _error(f"The statistics ({mean_label}) do not fit this model: {err}") from None
                out = self.pipe(source_raw, target_raw, thetas=list(thetas), alphas=list(alphas),
                                num_inference_steps=int(steps), guidance_scale=float(guidance),
                                height=size, width=size, generator=torch.Generator().manual_seed(seed),
                                callback_on_step_end=self._step_callback(should_stop))
                ends = torch.stack([source_raw, target_raw])  # (2, D)
                ends_conf = self.pipe.estimated_conformity(ends)  # (2,)
                describe = self.pipe.describe()
                reference = None if self.reference is None else self._reference_conformity(describe)
            except RenderCancelled:
                with self._lock:
                    self.cancelled += 1
                raise _error("Render stopped: the page that asked for it was closed.") from None
            except gr.Error:  # (a ValueError too)
                raise
            except (ValueError, TypeError) as err:
                raise _error(f"The render failed: {err}") from None
            finally:
                self.pipe.set_statistics(self.default_statistics)
        single = len(out.thetas) * len(out.alphas) == 1
        # The keys of the CLI's sidecar (vslerp.ui.cmd_grid._metadata), plus the editor's own.
        metadata = {
            "command": "ui", "vslerp_version": describe.get("vslerp_version"),
            "model": describe.get("decoder"), "prior": describe.get("prior"),
            "stats": {"path": stats_path, "fingerprint": describe.get("stats_fingerprint"),
                      "mean_source": describe.get("mean_source")},
            "dtype": describe.get("dtype"),
            "source": source_ref, "target": target_ref,
            "thetas": [float(t) for t in out.thetas], "alphas": [float(a) for a in out.alphas],
            "seed": seed, "steps": int(steps), "size": size, "guidance": float(guidance),
            "batch_size": 8, "allow_extrapolation": False, "labels": not single,
            "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
            "pipeline": describe, "prior_steps": self.state.prior_steps, "tiny_random": self.tiny_random,
        }
        return {"images": list(out.images), "thetas": list(out.thetas), "alphas": list(out.alphas),
                "conformity": out.conformity.float(), "source_conformity": float(ends_conf[0]),
                "target_conformity": float(ends_conf[1]), "metadata": metadata,
                "method": describe.get("conformity"), "mean_source": describe.get("mean_source"),
                "mean_label": mean_label, "reference_conformity": reference}

    # -- event callbacks ------------------------------------------------------------------
    def edit(self, source, target_image, target_prompt, theta, alpha, seed, steps=2, guidance=4.0,
             size=64, mean_source=None, stats_file=None, *, target_kind: str = "auto", should_stop=None):
        """One cell θ, α → (image, result dict). The `/edit` API endpoint."""
        result = self.render(source, target_image, target_prompt, [float(theta)], [float(alpha)], seed,
                             steps, guidance, size, mean_source, stats_file, target_kind=target_kind,
                             should_stop=should_stop)
        result["kind"] = "result"
        return result["images"][0], result

    def sweep(self, source, target_image, target_prompt, thetas_text, alphas_text, seed, steps=2,
              guidance=4.0, size=64, mean_source=None, stats_file=None, *, target_kind: str = "auto",
              should_stop=None):
        """A θ × α grid in one batched pipeline call → (labelled grid image, result dict).

        θ must lie in 0..1 (the source .. the target); α may leave the paper's useful range
        −2..2 (research use), which the read-out then notes.
        """
        from vslerp.ui.outputs import make_grid, parse_values

        try:
            thetas = parse_values(str(thetas_text), "θ values")
            alphas = parse_values(str(alphas_text), "α values")
        except ValueError as err:
            raise _error(str(err)) from None
        outside = [t for t in thetas if not 0.0 <= t <= 1.0]
        if outside:
            raise _error(f"θ values must lie between 0 (the source) and 1 (the target), got {outside[0]:g}. "
                         "(`vslerp grid --allow-extrapolation` renders θ outside 0..1.)")
        if len(thetas) * len(alphas) > MAX_CELLS:
            raise _error(f"A sweep has at most {MAX_CELLS} cells, got {len(thetas)}×{len(alphas)}.")
        result = self.render(source, target_image, target_prompt, thetas, alphas, seed, steps, guidance,
                             size, mean_source, stats_file, target_kind=target_kind, should_stop=should_stop)
        result["kind"] = "sweep"
        grid = make_grid(result["images"], result["thetas"], result["alphas"])
        result["grid"] = grid
        return grid, result

    @staticmethod
    def _describe_target(ref: dict) -> str:
        if ref.get("kind") == "prompt":
            return f"prompt “{ref['prompt']}”"
        return f"image `{ref.get('path') or 'upload'}`"

    def readout(self, result: dict | None) -> str:
        """Markdown conformity read-out of source, target and result(s)."""
        import numpy as np

        if not result:
            return ""
        conf = result["conformity"].reshape(-1).tolist()
        meta = result["metadata"]
        cells = ", ".join(f"{c:.4f}" for c in conf[:8]) + (" …" if len(conf) > 8 else "")
        lines = [
            f"**Target:** {self._describe_target(meta['target'])} · **mean:** {result['mean_label']}",
            "",
            f"**Estimated conformity** ({result['method']})",
            "",
            "| | conformity |", "|---|---|",
            f"| source | {result['source_conformity']:.4f} |",
            f"| target | {result['target_conformity']:.4f} |",
            f"| {'result' if len(conf) == 1 else f'sweep cells ({len(conf)})'} | {cells} |",
        ]
        far = [a for a in meta["alphas"] if abs(a) > USEFUL_ALPHA]
        if far:
            lines += ["", f"_Note: α = {', '.join(f'{a:g}' for a in far)} lies outside −{USEFUL_ALPHA:g}.."
                      f"{USEFUL_ALPHA:g}, the paper's useful range: extrapolation, expect artefacts._"]
        ref = result.get("reference_conformity")
        if ref is None:
            lines += ["", "_No reference distribution: the statistics hold sums only. Start with "
                      "`--reference DIR` (embeddings saved by `vslerp stats compute --save-embeddings`) "
                      "to see where these fall._"]
        else:
            ref = np.asarray(ref)

            def pct(value):
                return float((ref <= value).mean() * 100)

            if len(conf) == 1:
                cell_text = f"result {pct(conf[0]):.0f}"
            else:
                cell_pct = [pct(c) for c in conf]
                cell_text = f"sweep cells {min(cell_pct):.0f}–{max(cell_pct):.0f}"
            lines += ["", f"Percentile in the reference ({len(ref)} images, scored with the same mean): "
                      f"source {pct(result['source_conformity']):.0f}, "
                      f"target {pct(result['target_conformity']):.0f}, {cell_text}."]
        return "\n".join(lines)

    def histogram(self, result: dict | None):
        """A small matplotlib histogram of the reference conformity with markers, or None.

        The reference is scored with the edit's own statistics. One result is a red line; a
        sweep's cells are a red rug (one tick per cell).
        """
        if not result or result.get("reference_conformity") is None:
            return None
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2, 2.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.hist(result["reference_conformity"], bins=40, color="#9aa5b1")
        for label, value, color in (("source", result["source_conformity"], "#1f77b4"),
                                    ("target", result["target_conformity"], "#2ca02c")):
            ax.axvline(value, color=color, lw=2, label=label)
        conf = result["conformity"].reshape(-1).tolist()
        if len(conf) == 1:
            ax.axvline(conf[0], color="#d62728", lw=2, label="result")
        else:
            ax.plot(conf, [0.06] * len(conf), "|", color="#d62728", ms=16, mew=1.5,
                    transform=ax.get_xaxis_transform(), label=f"sweep cells ({len(conf)})")
        ax.set_xlabel(f"estimated conformity (mean: {result['mean_label']})", fontsize=8)
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper left")
        return fig

    def downloads(self, result: dict | None, history: list | None = None) -> list[str]:
        """[PNG with metadata, its .json sidecar, GIF] of the result or sweep.

        The GIF of a single result animates ``history`` (the session's results, oldest first)
        kept to those of the result's own size, ending with this result.
        """
        if not result:
            return []
        from vslerp.ui.outputs import save_animation, save_png

        folder = Path(tempfile.mkdtemp(prefix=f"{result['kind']}-", dir=self.out_dir))
        image = result.get("grid") or result["images"][0]
        png = save_png(image, folder / f"vslerp-{result['kind']}.png", result["metadata"])
        files = [str(png), str(png.with_suffix(".json"))]
        if len(result["images"]) > 1:
            frames = result["images"]
        else:
            frames = [im for im in (history or []) if im.size == image.size] or [image]
        try:
            gif = save_animation(frames, folder / f"vslerp-{result['kind']}.gif", fps=4, pingpong=len(frames) > 2)
            files.append(str(gif))
        except (OSError, ValueError) as err:
            log.warning("vslerp editor: GIF not written: %s", err)
            _warn(f"The GIF could not be written ({err}); the PNG and JSON are there.")
        return files

    def details(self, result: dict | None, gallery: list | None):
        """After an edit/sweep: read-out, histogram, gallery, gallery state, downloads.

        Every part degrades on its own: a part that fails shows a warning on the page and the
        others still update.
        """
        import gradio as gr

        gallery = list(gallery or [])
        readout, figure, files = "", None, []
        if result:
            meta = result["metadata"]
            shown = result.get("grid") or result["images"][0]
            if result["kind"] == "result":
                caption = f"θ={meta['thetas'][0]:g} α={meta['alphas'][0]:g} seed={meta['seed']}"
            else:
                caption = f"sweep {len(meta['thetas'])}×{len(meta['alphas'])} seed={meta['seed']}"
            caption += f" · {meta['size']}px · mean: {result['mean_label']}"
            history = [im for im, cap in gallery if cap.startswith("θ=")][-15:] + [shown]
            gallery = (gallery + [(shown, caption)])[-MAX_GALLERY:]
            for part in ("readout", "histogram", "downloads"):
                try:
                    if part == "readout":
                        readout = self.readout(result)
                    elif part == "histogram":
                        figure = self.histogram(result)
                    else:
                        files = self.downloads(result, history)
                except Exception as err:  # a follow-up never fails silently nor hides the others
                    log.exception("vslerp editor: %s failed", part)
                    _warn(f"The {part} could not be made ({type(err).__name__}: {err}).")
        plot = gr.update(value=figure, visible=figure is not None)
        downloads = gr.update(value=files or None, visible=bool(files))
        return readout, plot, gallery, gallery, downloads

    @staticmethod
    def roll_seed() -> int:
        return random.randint(0, 2**31 - 1)


def _data_url_to_file(url: str, cache_dir: str, name: str) -> str:
    """Write a ``data:…;base64,`` image payload to a file without decoding its pixels."""
    import gradio as gr

    head, _, body = url.partition(",")
    if ";base64" not in head:
        raise gr.Error(f"The {name} must be a base64 data URL or a file upload.")
    if len(body) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise gr.Error(f"The {name} is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB.")
    try:
        data = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise gr.Error(f"The {name} cannot be read (bad base64 data).") from None
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="data-url-", suffix=".img", dir=folder)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def checked_image(**kwargs):
    """A gr.Image whose callbacks receive the uploaded file itself, undecoded, as an :class:`Upload`.

    Gradio's own preprocessing opens every upload with PIL and, for a file whose mode is not
    ``image_mode``, decodes and converts it before any callback runs (a few-kB 1-bit PNG of
    8000×8000 pixels becomes 200 MB of RGB). This instance's ``preprocess`` instead passes the
    uploaded file's path on (with its original name); :func:`open_upload` checks its header and
    decodes it. Data URLs (a raw HTTP client's base64) are written to a file as bytes. Uploads,
    drag and drop, paste and webcam all arrive as files. (An instance attribute, not a subclass:
    gradio's component metaclass writes a ``.pyi`` stub beside the source of every subclass.)
    """
    import gradio as gr

    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    name = (component.label or "uploaded image").lower()

    def preprocess(payload):
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            return Upload(_data_url_to_file(url, component.GRADIO_CACHE, name), None)
        if not getattr(payload, "path", None):
            raise gr.Error(f"The {name} did not arrive: upload it again.")
        return Upload(payload.path, getattr(payload, "orig_name", None))

    component.preprocess = preprocess
    return component


def _client_gone_probe():
    """A callable telling whether the page (session) that started this event has disconnected.

    Gradio keeps running a synchronous function after its page is closed; it only marks the
    queue's event as not ``alive``. This looks that event up (gradio internals: ``LocalContext``,
    ``blocks._queue.active_jobs``), so a render can stop between denoising steps. None when not
    inside a queued gradio event or when those internals are not there.
    """
    try:
        from gradio.context import LocalContext

        blocks = LocalContext.blocks.get(None)
        event_id = LocalContext.event_id.get(None)
        if blocks is None or event_id is None:
            return None
        for job in list(blocks._queue.active_jobs):
            for event in job or []:
                if getattr(event, "_id", None) == event_id and hasattr(event, "alive"):
                    return lambda: not event.alive
    except Exception:  # another gradio's internals: no early stop, nothing else changes
        return None
    return None


def _unexpected(err: Exception):
    """An unexpected failure as a message on the page (the server log has the traceback)."""
    log.error("vslerp editor: unexpected error", exc_info=err)
    return _error(f"Unexpected error ({type(err).__name__}: {' '.join(str(err).split())[:300]}); "
                  "the server log has the details.")


_CSS = """
#vslerp-banner {background: #fff4ce; border: 1px solid #e0b400; border-radius: 6px; padding: 4px 10px;}
#vslerp-result img, #vslerp-gallery img, #vslerp-sweep-img img {image-rendering: pixelated;}
#vslerp-result img {width: 100%; height: 100%; object-fit: contain;}
"""


def build_editor(pipe, *, tiny_random: bool = False, concurrency: int = 1,
                 reference: torch.Tensor | None = None, prior_steps: int | None = None,
                 default_steps: int | None = None, default_size: int | None = None,
                 stats_path: str | Path | None = None):
    """The editor as a ``gr.Blocks`` (not launched). Its queue runs ``concurrency`` jobs at once.

    API endpoints (``gradio_client``): ``/edit`` (source image, target image, target prompt,
    theta, alpha, seed[, steps, guidance, size, mean source, statistics file] → image) and
    ``/sweep`` (…, thetas text, alphas text, … → labelled grid image). Give a target image or a
    prompt, not both. The page's own events take its "Target: prompt | image" choice instead.
    ``editor = blocks.vslerp_editor`` exposes the callbacks and the cache
    (``editor.state.encode_calls``).
    """
    import gradio as gr

    if int(concurrency) < 1:
        raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
    prior_steps = prior_steps or (2 if tiny_random else 25)
    steps0 = default_steps or (2 if tiny_random else 50)
    size0 = default_size or (64 if tiny_random else 512)
    editor = Editor(pipe, reference=reference, tiny_random=tiny_random, prior_steps=prior_steps,
                    stats_path=stats_path)
    info = pipe.describe()

    def call(method, *args, target_kind="auto"):
        try:
            return method(*args, target_kind=target_kind, should_stop=_client_gone_probe())
        except gr.Error:
            raise
        except Exception as err:  # not a user's mistake: say so on the page, log the traceback
            raise _unexpected(err) from None

    # API endpoints: the target is whichever of image / prompt is given.
    def edit_fn(source, target_image, target_prompt, theta, alpha, seed, steps=steps0, guidance=4.0,
                size=size0, mean_source="startup", stats_file=None,
                progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio API
        return call(editor.edit, source, target_image, target_prompt, theta, alpha, seed, steps, guidance,
                    size, mean_source, stats_file)[0]

    def sweep_fn(source, target_image, target_prompt, thetas_text, alphas_text, seed, steps=steps0,
                 guidance=4.0, size=size0, mean_source="startup", stats_file=None,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio API
        return call(editor.sweep, source, target_image, target_prompt, thetas_text, alphas_text, seed, steps,
                    guidance, size, mean_source, stats_file)[0]

    # The page's events: the visible Target choice decides.
    def ui_edit(source, target_image, target_prompt, theta, alpha, seed, steps, guidance, size, mean_source,
                stats_file, target_kind, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio API
        return call(editor.edit, source, target_image, target_prompt, theta, alpha, seed, steps, guidance,
                    size, mean_source, stats_file, target_kind=target_kind)

    def ui_sweep(source, target_image, target_prompt, thetas_text, alphas_text, seed, steps, guidance, size,
                 mean_source, stats_file, target_kind, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        return call(editor.sweep, source, target_image, target_prompt, thetas_text, alphas_text, seed, steps,
                    guidance, size, mean_source, stats_file, target_kind=target_kind)

    def details_fn(result, gallery):
        try:
            return editor.details(result, gallery)
        except Exception as err:  # never a bare "Error" badge
            raise _unexpected(err) from None

    def show_target(kind):
        return gr.update(visible=kind == "prompt"), gr.update(visible=kind == "image")

    with gr.Blocks(title="vslerp editor") as demo:
        gr.Markdown("# vslerp editor\nVertical SLERP in raw CLIP space (Levi & Gilboa, Eq. 12): "
                    "θ moves from the source towards the target, α pulls the path towards the image mean.")
        if tiny_random:
            gr.Markdown("⚠️ **Tiny random model — noise-only smoke test.** The images are noise; "
                        "this checks the editor works without model weights.", elem_id="vslerp-banner")
        with gr.Row():
            with gr.Column(scale=1):
                source = checked_image(label="Source image", height=220,
                                       sources=["upload", "clipboard", "webcam"], elem_id="vslerp-source")
                target_kind = gr.Radio(["prompt", "image"], value="prompt", label="Target",
                                       info="what θ moves towards", elem_id="vslerp-target-kind")
                target_prompt = gr.Textbox(label="Target prompt", placeholder="a photo of a cat",
                                           elem_id="vslerp-prompt")
                target_image = checked_image(label="Target image", height=180, visible=False,
                                             sources=["upload", "clipboard", "webcam"], elem_id="vslerp-target")
            with gr.Column(scale=1):
                theta = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="θ (towards the target)",
                                  elem_id="vslerp-theta")
                alpha = gr.Slider(-USEFUL_ALPHA, USEFUL_ALPHA, value=0.0, step=0.1,
                                  label="α (pull towards the mean)", elem_id="vslerp-alpha")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, scale=3)
                    dice = gr.Button("Random seed", scale=1, min_width=60, size="sm")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=steps0, step=1, label="Steps", elem_id="vslerp-steps")
                    guidance = gr.Slider(1.0, 12.0, value=4.0, step=0.5, label="Guidance")
                size = gr.Slider(64, 1024, value=size0, step=64, label="Size (px)", elem_id="vslerp-size")
                with gr.Accordion("Advanced", open=False):
                    mean_source = gr.Radio(["startup", "prior clip_mean", "statistics file"],
                                           value="startup", label="Mean source", elem_id="vslerp-mean-source",
                                           info=f"startup: {info.get('mean_source')}")
                    stats_file = gr.File(label="Statistics file (.safetensors)", file_types=[".safetensors"],
                                         type="filepath", height=90, elem_id="vslerp-stats-file")
                run = gr.Button("Edit", variant="primary", elem_id="vslerp-run")
            with gr.Column(scale=1):
                result = gr.Image(label="Result", type="pil", interactive=False, height=300,
                                  elem_id="vslerp-result", format="png")
                readout = gr.Markdown("_Upload a source, give a target, press **Edit** or move θ/α._",
                                      elem_id="vslerp-readout")
                plot = gr.Plot(label="Reference conformity", show_label=False, visible=False)
                downloads = gr.File(label="Downloads: PNG with metadata, its .json sidecar, GIF",
                                    file_count="multiple", interactive=False, visible=False,
                                    elem_id="vslerp-downloads")
        with gr.Accordion("Sweep (θ × α grid in one batched call)", open=False):
            with gr.Row():
                thetas_text = gr.Textbox(value="0,0.5,1", label="θ values, 0..1 (a,b,c or start:stop:count)",
                                         elem_id="vslerp-thetas")
                alphas_text = gr.Textbox(value="-1,0,1", label=f"α values (useful: −{USEFUL_ALPHA:g}..{USEFUL_ALPHA:g})",
                                         elem_id="vslerp-alphas")
                sweep_btn = gr.Button("Sweep", elem_id="vslerp-sweep")
            sweep_img = gr.Image(label="Sweep", type="pil", interactive=False, format="png",
                                 elem_id="vslerp-sweep-img")
        gallery = gr.Gallery(label="Results so far", columns=8, fit_columns=False, height=200, object_fit="contain",
                             elem_id="vslerp-gallery")
        gallery_state = gr.State([])
        result_state = gr.State(None)
        gr.Markdown(f"<small>model: {info.get('decoder')} · prior: {info.get('prior')} · "
                    f"dim {info.get('dim')} · {info.get('dtype')} on {info.get('device')}</small>")
        api_edit = gr.Button("edit (API)", visible=False)
        api_sweep = gr.Button("sweep (API)", visible=False)

        common = [seed, steps, guidance, size, mean_source, stats_file]
        edit_inputs = [source, target_image, target_prompt, theta, alpha, *common]
        sweep_inputs = [source, target_image, target_prompt, thetas_text, alphas_text, *common]
        detail = dict(fn=details_fn, inputs=[result_state, gallery_state],
                      outputs=[readout, plot, gallery, gallery_state, downloads], api_name=False)
        target_kind.change(show_target, target_kind, [target_prompt, target_image], api_name=False)
        ui_edit_event = dict(fn=ui_edit, inputs=[*edit_inputs, target_kind], outputs=[result, result_state],
                             api_name=False)
        run.click(**ui_edit_event).success(**detail)
        for slider in (theta, alpha):
            slider.release(**ui_edit_event, trigger_mode="always_last").success(**detail)
        sweep_btn.click(ui_sweep, [*sweep_inputs, target_kind], [sweep_img, result_state],
                        api_name=False).success(**detail)
        dice.click(editor.roll_seed, None, seed, api_name=False)
        api_edit.click(edit_fn, edit_inputs, result, api_name="edit")
        api_sweep.click(sweep_fn, sweep_inputs, sweep_img, api_name="sweep")

    demo.queue(default_concurrency_limit=int(concurrency))
    demo.vslerp_editor = editor
    demo.vslerp_css = _CSS
    return demo


def launch_kwargs(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False) -> dict:
    """Keyword arguments for ``demo.launch`` with the editor's safe defaults (Gradio ≥ 6: ``css``)."""
    return {"server_name": host, "server_port": port, "share": share, "max_file_size": "25mb",
            "css": _CSS, "show_error": False, "allowed_paths": [], "quiet": False,
            "ssr_mode": False}
