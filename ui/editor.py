"""The Gradio editor: vSLERP(source, target, θ, α) (paper Eq. 12) with a cache of embeddings.

Pure callbacks first (:class:`EditorState`, :class:`Editor`), then :func:`build_editor`, the
``gr.Blocks`` layout with explicit inputs, outputs and ``api_name``. Nothing is launched here:
``vslerp ui`` (``vslerp.ui.cmd_ui``) launches it. No geometry or conformity code lives here:
embeddings come from the pipeline's encoders, cells and conformity from ``pipe(...)`` and
``pipe.estimated_conformity`` (the core's Eq. 11 / exact identity).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import PIL.Image
import torch

__all__ = ["MAX_PIXELS", "Editor", "EditorState", "build_editor", "checked_image", "launch_kwargs", "open_upload"]

MAX_PIXELS = 40_000_000  # uploads above this many pixels are refused (decompression bombs)
MAX_GALLERY = 24  # results kept in a session's gallery
_CACHE_SIZE = 64  # embeddings kept per kind (images, prompts)


def _error(message: str):
    import gradio as gr

    return gr.Error(message)


def open_upload(path, name: str = "source", max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Open an uploaded image file as RGB, refusing unreadable files and huge images.

    The pixel count is checked from the header before any pixel is decoded. Raises gr.Error.
    """
    if path is None:
        raise _error(f"No {name} image: upload one (drag and drop, paste or webcam).")
    if isinstance(path, PIL.Image.Image):
        image = path
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                image = PIL.Image.open(path)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise _error(f"The {name} image is too large to open (decompression bomb?).") from None
        except (OSError, ValueError) as err:
            raise _error(f"The {name} image cannot be read ({type(err).__name__}).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _error(f"The {name} image is too large: {width}×{height} pixels "
                     f"(at most {max_pixels:,} pixels).")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise _error(f"The {name} image cannot be decoded ({type(err).__name__}).") from None


def _image_ref(upload, pixels_sha256: str) -> dict:
    """{"kind": "image", "name", "sha256" (of the file, as the CLI's sidecar), "pixels_sha256"}."""
    ref = {"kind": "image", "name": None, "sha256": None, "pixels_sha256": pixels_sha256}
    if isinstance(upload, (str, Path)) and Path(upload).is_file():
        ref["name"] = Path(upload).name
        ref["sha256"] = hashlib.sha256(Path(upload).read_bytes()).hexdigest()
    return ref


class EditorState:
    """Cache of raw embeddings, shared by every session of one editor (thread-safe).

    Images are keyed by a sha256 of their RGB pixels and size; prompts by (prompt, seed,
    prior steps), since a prompt becomes an image embedding through the seeded prior.
    ``encode_calls`` / ``prompt_calls`` count the encoder / prior runs (cache misses).
    """

    def __init__(self, pipe, *, prior_steps: int = 25, cache_size: int = _CACHE_SIZE) -> None:
        self.pipe = pipe
        self.prior_steps = int(prior_steps)
        self.cache_size = int(cache_size)
        self.encode_calls = 0  # image-encoder runs
        self.prompt_calls = 0  # prompt → prior runs
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompts: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # guards the caches and the counters
        self.pipe_lock = threading.RLock()  # one pipeline call at a time (statistics are pipe state)

    @staticmethod
    def image_key(image: PIL.Image.Image) -> str:
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
        return digest.hexdigest()

    def _remember(self, cache: OrderedDict, key, value: torch.Tensor) -> None:
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


class Editor:
    """The editor's callbacks (pure functions of their inputs plus the shared cache).

    pipe: a loaded ``VSlerpPipeline``. reference: optional (N, D) raw image embeddings whose
    conformity is the reference distribution of the histogram. tiny_random: label results as
    the noise-only smoke test.
    """

    def __init__(self, pipe, *, reference: torch.Tensor | None = None, tiny_random: bool = False,
                 prior_steps: int = 25, out_dir: str | Path | None = None) -> None:
        self.pipe = pipe
        self.state = EditorState(pipe, prior_steps=prior_steps)
        self.tiny_random = tiny_random
        self.default_statistics = pipe.statistics
        self._stats_cache: dict[str, object] = {}
        self.reference_conformity = None
        if reference is not None:
            self.reference_conformity = pipe.estimated_conformity(reference).numpy()  # (N,)
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="vslerp-editor-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # -- inputs ---------------------------------------------------------------------------
    def _statistics(self, mean_source: str | None, stats_file):
        """The Statistics for the chosen mean source (the startup one, the prior's, or a file)."""
        from vslerp.stats import Statistics, load

        if mean_source == "prior clip_mean":
            return Statistics.from_prior(self.pipe.prior, model_id=self.pipe.model_ids.get("prior"))
        if mean_source == "statistics file":
            if not stats_file:
                raise _error("Mean source 'statistics file': upload a .safetensors statistics file.")
            path = str(stats_file)
            if path not in self._stats_cache:
                try:
                    self._stats_cache[path] = load(path)
                except (OSError, ValueError) as err:
                    raise _error(f"Cannot read the statistics file: {err}") from None
            return self._stats_cache[path]
        return self.default_statistics

    def _target(self, target_image, prompt: str | None, seed: int):
        """(raw (D,), description) of the target: the image if given, else the prompt."""
        if target_image is not None:
            image = open_upload(target_image, "target")
            raw, key = self.state.image_embedding(image)
            return raw, _image_ref(target_image, key)
        prompt = (prompt or "").strip()
        if not prompt:
            raise _error("No target: upload a target image or type a target prompt.")
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

    def render(self, source, target_image, prompt, thetas, alphas, seed, steps, guidance, size,
               mean_source=None, stats_file=None) -> dict:
        """Run the pipeline on cached embeddings; returns a result dict (images, metadata, ...)."""
        seed = self._seed(seed)
        src_image = open_upload(source, "source")
        size = int(size)
        source_raw, source_key = self.state.image_embedding(src_image)  # (D,)
        target_raw, target_desc = self._target(target_image, prompt, seed)  # (D,)
        stats = self._statistics(mean_source, stats_file)
        with self.state.pipe_lock:
            try:
                self.pipe.set_statistics(stats)
                out = self.pipe(source_raw, target_raw, thetas=list(thetas), alphas=list(alphas),
                                num_inference_steps=int(steps), guidance_scale=float(guidance),
                                height=size, width=size, generator=torch.Generator().manual_seed(seed))
                ends = torch.stack([source_raw, target_raw])  # (2, D)
                ends_conf = self.pipe.estimated_conformity(ends)  # (2,)
                describe = self.pipe.describe()
            except (ValueError, TypeError) as err:
                raise _error(str(err)) from None
            finally:
                self.pipe.set_statistics(self.default_statistics)
        # The keys of the CLI's sidecar (vslerp.ui.cmd_grid), plus the editor's own.
        metadata = {
            "command": "ui", "vslerp_version": describe.get("vslerp_version"),
            "model": describe.get("decoder"), "prior": describe.get("prior"),
            "stats": {"path": str(stats_file) if mean_source == "statistics file" else None,
                      "fingerprint": describe.get("stats_fingerprint"),
                      "mean_source": describe.get("mean_source")},
            "dtype": describe.get("dtype"),
            "source": _image_ref(source, source_key), "target": target_desc,
            "thetas": [float(t) for t in out.thetas], "alphas": [float(a) for a in out.alphas],
            "seed": seed, "steps": int(steps), "size": size, "guidance": float(guidance),
            "batch_size": 8, "allow_extrapolation": False, "labels": True,
            "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
            "pipeline": describe, "prior_steps": self.state.prior_steps, "tiny_random": self.tiny_random,
        }
        return {"images": list(out.images), "thetas": list(out.thetas), "alphas": list(out.alphas),
                "conformity": out.conformity.float(), "source_conformity": float(ends_conf[0]),
                "target_conformity": float(ends_conf[1]), "metadata": metadata,
                "method": describe.get("conformity"), "mean_source": describe.get("mean_source")}

    # -- event callbacks ------------------------------------------------------------------
    def edit(self, source, target_image, target_prompt, theta, alpha, seed, steps=2, guidance=4.0,
             size=64, mean_source=None, stats_file=None, progress=None):
        """One cell θ, α → (image, result dict). The `/edit` API endpoint."""
        result = self.render(source, target_image, target_prompt, [float(theta)], [float(alpha)], seed,
                             steps, guidance, size, mean_source, stats_file)
        result["kind"] = "result"
        return result["images"][0], result

    def sweep(self, source, target_image, target_prompt, thetas_text, alphas_text, seed, steps=2,
              guidance=4.0, size=64, mean_source=None, stats_file=None, progress=None):
        """A θ × α grid in one batched pipeline call → (labelled grid image, result dict)."""
        from vslerp.ui.outputs import make_grid, parse_values

        try:
            thetas = parse_values(str(thetas_text), "thetas")
            alphas = parse_values(str(alphas_text), "alphas")
        except ValueError as err:
            raise _error(str(err)) from None
        if len(thetas) * len(alphas) > 64:
            raise _error(f"A sweep has at most 64 cells, got {len(thetas)}×{len(alphas)}.")
        result = self.render(source, target_image, target_prompt, thetas, alphas, seed, steps, guidance,
                             size, mean_source, stats_file)
        result["kind"] = "sweep"
        grid = make_grid(result["images"], result["thetas"], result["alphas"])
        result["grid"] = grid
        return grid, result

    def readout(self, result: dict | None) -> str:
        """Markdown conformity read-out of source, target and result(s)."""
        if not result:
            return ""
        conf = result["conformity"].reshape(-1).tolist()
        cells = ", ".join(f"{c:.4f}" for c in conf[:8]) + (" …" if len(conf) > 8 else "")
        lines = [
            f"**Estimated conformity** ({result['method']}, mean: {result['mean_source']})",
            "",
            "| | conformity |", "|---|---|",
            f"| source | {result['source_conformity']:.4f} |",
            f"| target | {result['target_conformity']:.4f} |",
            f"| {'result' if len(conf) == 1 else 'sweep cells'} | {cells} |",
        ]
        if self.reference_conformity is None:
            lines += ["", "_No reference distribution: the statistics hold sums only. Start with "
                      "`--reference DIR` (embeddings saved by `vslerp stats compute --save-embeddings`) "
                      "to see where these fall._"]
        else:
            ref = torch.as_tensor(self.reference_conformity)
            pct = [float((ref <= v).double().mean() * 100) for v in
                   (result["source_conformity"], result["target_conformity"], conf[0])]
            lines += ["", f"Percentile in the reference ({len(ref)} images): source {pct[0]:.0f}, "
                      f"target {pct[1]:.0f}, result {pct[2]:.0f}."]
        return "\n".join(lines)

    def histogram(self, result: dict | None):
        """A small matplotlib histogram of the reference conformity with markers, or None."""
        if not result or self.reference_conformity is None:
            return None
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2, 2.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.hist(self.reference_conformity, bins=40, color="#9aa5b1")
        marks = [("source", result["source_conformity"], "#1f77b4"),
                 ("target", result["target_conformity"], "#2ca02c"),
                 ("result", float(result["conformity"].reshape(-1)[0]), "#d62728")]
        for label, value, color in marks:
            ax.axvline(value, color=color, lw=2, label=label)
        ax.set_xlabel("estimated conformity")
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper left")
        return fig

    def downloads(self, result: dict | None) -> tuple[str | None, str | None]:
        """(PNG path with metadata, GIF path) of the result or sweep."""
        if not result:
            return None, None
        try:
            from vslerp.ui.outputs import save_animation, save_png
        except ImportError:  # an install without the CLI's output helpers: no downloads
            return None, None
        folder = Path(tempfile.mkdtemp(prefix=f"{result['kind']}-", dir=self.out_dir))
        image = result.get("grid") or result["images"][0]
        png = save_png(image, folder / f"vslerp-{result['kind']}.png", result["metadata"])
        frames = result["images"] if len(result["images"]) > 1 else result.get("history") or result["images"]
        gif = save_animation(frames, folder / f"vslerp-{result['kind']}.gif", fps=4,
                             pingpong=len(frames) > 2)
        return str(png), str(gif)

    def details(self, result: dict | None, gallery: list | None):
        """After an edit/sweep: read-out, histogram, gallery, PNG and GIF downloads."""
        gallery = list(gallery or [])
        if result:
            meta = result["metadata"]
            caption = (f"θ={meta['thetas'][0]:g} α={meta['alphas'][0]:g} seed={meta['seed']}"
                       if result["kind"] == "result" else
                       f"sweep {len(meta['thetas'])}×{len(meta['alphas'])} seed={meta['seed']}")
            gallery.append((result.get("grid") or result["images"][0], caption))
            gallery = gallery[-MAX_GALLERY:]
            if result["kind"] == "result":
                result["history"] = [im for im, cap in gallery if cap.startswith("θ=")][-16:]
        png, gif = self.downloads(result)
        return self.readout(result), self.histogram(result), gallery, gallery, png, gif

    @staticmethod
    def roll_seed() -> int:
        return random.randint(0, 2**31 - 1)


def checked_image(**kwargs):
    """A gr.Image whose upload errors (unreadable file, decompression bomb) are gr.Error messages.

    Gradio opens uploads with PIL while preprocessing, before any callback runs; this instance's
    ``preprocess`` turns those failures into a message naming the image instead of an opaque
    server error. (An instance attribute, not a subclass: gradio's component metaclass writes a
    ``.pyi`` stub beside the source of every component subclass.)
    """
    import gradio as gr

    component = gr.Image(**kwargs)
    name = (component.label or "uploaded image").lower()
    plain_preprocess = component.preprocess

    def preprocess(payload):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                return plain_preprocess(payload)
        except gr.Error:
            raise
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise gr.Error(f"The {name} is too large to open (decompression bomb?).") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise gr.Error(f"The {name} cannot be read ({type(err).__name__}).") from None

    component.preprocess = preprocess
    return component


_CSS = """
#vslerp-banner {background: #fff4ce; border: 1px solid #e0b400; border-radius: 6px; padding: 4px 10px;}
#vslerp-result img, #vslerp-gallery img, #vslerp-sweep-img img {image-rendering: pixelated;}
#vslerp-result img {width: 100%; height: 100%; object-fit: contain;}
"""


def build_editor(pipe, *, tiny_random: bool = False, concurrency: int = 1,
                 reference: torch.Tensor | None = None, prior_steps: int | None = None,
                 default_steps: int | None = None, default_size: int | None = None):
    """The editor as a ``gr.Blocks`` (not launched). Its queue runs ``concurrency`` jobs at once.

    API endpoints (``gradio_client``): ``/edit`` (source image, target image, target prompt,
    theta, alpha, seed[, steps, guidance, size] → image) and ``/sweep`` (…, thetas text,
    alphas text, … → labelled grid image). ``editor = blocks.vslerp_editor`` exposes the
    callbacks and the cache (``editor.state.encode_calls``).
    """
    import gradio as gr

    if int(concurrency) < 1:
        raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
    prior_steps = prior_steps or (2 if tiny_random else 25)
    steps0 = default_steps or (2 if tiny_random else 50)
    size0 = default_size or (64 if tiny_random else 512)
    editor = Editor(pipe, reference=reference, tiny_random=tiny_random, prior_steps=prior_steps)
    info = pipe.describe()

    def edit_fn(source, target_image, target_prompt, theta, alpha, seed, steps=steps0, guidance=4.0,
                size=size0, mean_source=None, stats_file=None, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio API
        return editor.edit(source, target_image, target_prompt, theta, alpha, seed, steps, guidance, size,
                           mean_source, stats_file)

    def sweep_fn(source, target_image, target_prompt, thetas_text, alphas_text, seed, steps=steps0,
                 guidance=4.0, size=size0, mean_source=None, stats_file=None,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - gradio API
        return editor.sweep(source, target_image, target_prompt, thetas_text, alphas_text, seed, steps,
                            guidance, size, mean_source, stats_file)

    with gr.Blocks(title="vslerp editor") as demo:
        gr.Markdown("# vslerp editor\nVertical SLERP in raw CLIP space (Levi & Gilboa, Eq. 12): "
                    "θ moves from the source towards the target, α pulls the path towards the image mean.")
        if tiny_random:
            gr.Markdown("⚠️ **Tiny random model — noise-only smoke test.** The images are noise; "
                        "this checks the editor works without model weights.", elem_id="vslerp-banner")
        with gr.Row():
            with gr.Column(scale=1):
                source = checked_image(label="Source image", type="filepath", height=220,
                                       sources=["upload", "clipboard", "webcam"], elem_id="vslerp-source")
                with gr.Tab("Target prompt"):
                    target_prompt = gr.Textbox(label="Target prompt", placeholder="a photo of a cat",
                                               info="used when no target image is given",
                                               elem_id="vslerp-prompt")
                with gr.Tab("Target image"):
                    target_image = checked_image(label="Target image", type="filepath", height=180,
                                                 sources=["upload", "clipboard", "webcam"],
                                                 elem_id="vslerp-target")
            with gr.Column(scale=1):
                theta = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="θ (towards the target)",
                                  elem_id="vslerp-theta")
                alpha = gr.Slider(-2.0, 2.0, value=0.0, step=0.1, label="α (pull towards the mean)",
                                  elem_id="vslerp-alpha")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, scale=3)
                    dice = gr.Button("Random seed", scale=1, min_width=60, size="sm")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=steps0, step=1, label="Steps")
                    guidance = gr.Slider(1.0, 12.0, value=4.0, step=0.5, label="Guidance")
                size = gr.Slider(64, 1024, value=size0, step=64, label="Size (px)")
                with gr.Accordion("Advanced", open=False):
                    mean_source = gr.Radio(["startup", "prior clip_mean", "statistics file"],
                                           value="startup", label="Mean source",
                                           info=f"startup: {info.get('mean_source')}")
                    stats_file = gr.File(label="Statistics file (.safetensors)", file_types=[".safetensors"],
                                         type="filepath")
                run = gr.Button("Edit", variant="primary", elem_id="vslerp-run")
            with gr.Column(scale=1):
                result = gr.Image(label="Result", type="pil", interactive=False, height=300,
                                  elem_id="vslerp-result", format="png")
                readout = gr.Markdown("_Upload a source, give a target, press **Edit** or move θ/α._",
                                      elem_id="vslerp-readout")
                plot = gr.Plot(label="Reference conformity", show_label=False,
                               visible=editor.reference_conformity is not None)
        with gr.Accordion("Sweep (θ × α grid in one batched call)", open=False):
            with gr.Row():
                thetas_text = gr.Textbox(value="0,0.5,1", label="θ values (a,b,c or start:stop:count)")
                alphas_text = gr.Textbox(value="-1,0,1", label="α values")
                sweep_btn = gr.Button("Sweep", elem_id="vslerp-sweep")
            sweep_img = gr.Image(label="Sweep", type="pil", interactive=False, format="png",
                                 elem_id="vslerp-sweep-img")
        with gr.Row():
            png_file = gr.File(label="Download PNG (with metadata)", interactive=False, elem_id="vslerp-png")
            gif_file = gr.File(label="Download GIF", interactive=False, elem_id="vslerp-gif")
        gallery = gr.Gallery(label="Results so far", columns=8, fit_columns=False, height=200, object_fit="contain",
                             elem_id="vslerp-gallery")
        gallery_state = gr.State([])
        result_state = gr.State(None)
        gr.Markdown(f"<small>model: {info.get('decoder')} · prior: {info.get('prior')} · "
                    f"dim {info.get('dim')} · {info.get('dtype')} on {info.get('device')}</small>")

        edit_inputs = [source, target_image, target_prompt, theta, alpha, seed, steps, guidance, size,
                       mean_source, stats_file]
        detail_out = [readout, plot, gallery, gallery_state, png_file, gif_file]
        edit_event = dict(fn=edit_fn, inputs=edit_inputs, outputs=[result, result_state], api_name=False)
        run.click(**{**edit_event, "api_name": "edit"}).success(
            editor.details, [result_state, gallery_state], detail_out, api_name=False)
        for slider in (theta, alpha):
            slider.release(**edit_event, trigger_mode="always_last").success(
                editor.details, [result_state, gallery_state], detail_out, api_name=False)
        sweep_btn.click(sweep_fn, [source, target_image, target_prompt, thetas_text, alphas_text, seed, steps,
                                   guidance, size, mean_source, stats_file],
                        [sweep_img, result_state], api_name="sweep").success(
            editor.details, [result_state, gallery_state], detail_out, api_name=False)
        dice.click(editor.roll_seed, None, seed, api_name=False)

    demo.queue(default_concurrency_limit=int(concurrency))
    demo.vslerp_editor = editor
    demo.vslerp_css = _CSS
    return demo


def launch_kwargs(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False) -> dict:
    """Keyword arguments for ``demo.launch`` with the editor's safe defaults."""
    return {"server_name": host, "server_port": port, "share": share, "max_file_size": "25mb",
            "css": _CSS, "show_error": False, "allowed_paths": [], "quiet": False,
            "ssr_mode": False}
