"""The Gradio editor: vSLERP(source, target, θ, α) (paper Eq. 12) with a cache of embeddings.

Pure callbacks first (:class:`EditorState`, :class:`Editor`), then :func:`build_editor`, the
``gr.Blocks`` layout with explicit inputs, outputs and ``api_name``. Nothing is launched here:
``vslerp ui`` (``vslerp.ui.cmd_ui``) launches it. No geometry or conformity code lives here:
embeddings come from the pipeline's encoders, cells and conformity from
``pipe.render_batch(...)`` (concurrent requests batched, each rendered as ``pipe(...)`` renders
it alone) and ``pipe.estimated_conformity`` (the core's Eq. 11 / exact identity).

Modules: uploads and the embedding cache in ``vslerp.ui.editor_inputs``; the batching of
concurrent requests in ``vslerp.ui.editor_batch``; the page in ``vslerp.ui.editor_app``. Their
public names are importable from here.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from vslerp.ui.editor_batch import RenderQueue
from vslerp.ui.editor_inputs import (
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    EditorState,
    Upload,
    _display_name,
    _error,
    _mentioning,
    _sentence,
    _warn,
    checked_image,
    open_upload,
)

__all__ = ["MAX_BATCH_CELLS", "MAX_PIXELS", "MAX_UPLOAD_BYTES", "USEFUL_ALPHA", "Editor", "EditorState",
           "RenderCancelled", "Upload", "build_editor", "checked_image", "launch_kwargs", "open_upload"]

USEFUL_ALPHA = 2.0  # |α| ≤ 2: the paper's useful range (the α slider's); sweeps beyond get a note
MAX_GALLERY = 24  # results kept in a session's gallery
MAX_CELLS = 64  # cells of one sweep
STALE_NOTE = "⚠️ _Earlier settings: this sweep was made before the last Edit. Press **Sweep** to update it._"
MAX_BATCH_CELLS = 16  # cells of concurrent requests rendered in one batched call
MAX_STEPS = 200  # denoising steps of one render
MAX_SIZE = 2048  # px, the editor's largest render
_STATS_CACHE_SIZE = 4  # uploaded statistics files kept loaded (each holds a D×D sum)
_REFERENCE_CACHE_SIZE = 8  # reference conformity arrays kept (one per statistics fingerprint)

log = logging.getLogger(__name__)


# What the statistics' "source" and the conformity method are, in words (technical names stay in
# the metadata and the Mean source's info).
MEAN_WORDS = {"prior_clip_mean": "the prior's training mean", "dataset": "dataset statistics",
              "tensor": "a given mean vector"}
METHOD_WORDS = {"cosine_to_mean": "estimated from the mean",
                "exact_identity": "exact, from the dataset's statistics"}


class RenderCancelled(Exception):
    """Raised between denoising steps when whoever asked for the render has gone."""


class Editor:
    """The editor's callbacks (pure functions of their inputs plus the shared cache).

    pipe: a loaded ``VSlerpPipeline``. reference: optional (N, D) raw image embeddings whose
    conformity is the reference distribution of the histogram; it is scored with the same
    statistics as each edit (cached per statistics fingerprint). tiny_random: label results as
    the noise-only smoke test. stats_path: the ``--stats`` file the pipeline started with (for
    the metadata). ``steps_run`` / ``cancelled`` count denoising steps and cancelled renders.
    max_batch: cells of concurrent requests rendered in one batched pipeline call (1: one
    request at a time); ``queue`` (:class:`~vslerp.ui.editor_batch.RenderQueue`) counts batches.
    """

    def __init__(self, pipe, *, reference: torch.Tensor | None = None, tiny_random: bool = False,
                 prior_steps: int = 25, out_dir: str | Path | None = None,
                 stats_path: str | Path | None = None, max_batch: int = MAX_BATCH_CELLS) -> None:
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
        self.queue = RenderQueue(self._render_batch, max_cells=max_batch)

    # -- inputs ---------------------------------------------------------------------------
    def _statistics(self, mean_source: str | None, stats_file) -> tuple[object, str, str | None]:
        """(Statistics, label, path for the metadata) of the chosen mean source."""
        from vslerp.stats import Statistics, load

        if mean_source == "prior clip_mean":
            stats = Statistics.from_prior(self.pipe.prior, model_id=self.pipe.model_ids.get("prior"))
            return stats, MEAN_WORDS["prior_clip_mean"], None
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
            return stats, f"{MEAN_WORDS['dataset']} from {name}", name
        return self.default_statistics, self.startup_mean_label(), self.default_stats_path

    def startup_mean_label(self) -> str:
        """The startup image mean in words: "the prior's training mean", "dataset statistics from F"."""
        source = self.default_statistics.metadata.get("source")
        label = MEAN_WORDS.get(source, str(source))
        if self.default_stats_path:
            label = f"{label} from {Path(self.default_stats_path).name}"
        return label

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

    def _step_callback(self, should_stop: list):
        """Counts steps; stops the batch (RenderCancelled) once every page that asked for it is gone."""
        def on_step_end(pipe, step, timestep, tensors):
            with self._lock:
                self.steps_run += 1
            if should_stop and all(probe is not None and probe() for probe in should_stop):
                raise RenderCancelled
            return {}

        return on_step_end

    @staticmethod
    def _settings(steps, guidance, size) -> tuple[int, float, int]:
        """Steps, guidance and size checked as the page's sliders bound them (API callers too)."""
        from vslerp._checks import check_magnitude

        def whole(name, value, low, high):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise _error(f"{name} must be a number, got {value!r}.") from None
            if not low <= number <= high or number != int(number):  # NaN fails the first test
                raise _error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
            return int(number)

        steps = whole("Steps", steps, 1, MAX_STEPS)
        size = whole("Size", size, 64, MAX_SIZE)
        if size % 64:
            raise _error(f"Size must be a multiple of 64 px (as the Size slider), got {size}.")
        try:
            guidance = float(guidance)
            check_magnitude("guidance", guidance)
        except (TypeError, ValueError) as err:
            raise _error(f"Guidance must be a number of at most 1e6, got {guidance!r} ({err}).") from None
        return steps, guidance, size

    @staticmethod
    def _axis(name: str, symbol: str, values, lies_in_0_1: bool) -> list[float]:
        from vslerp._checks import check_magnitude

        out = []
        for value in values:
            try:
                value = float(value)
                check_magnitude(symbol, value)
            except TypeError:
                raise _error(f"{name} must be a number, got {value!r}.") from None
            except ValueError as err:  # "alpha 1e+308 is too large: |alpha| <= 1e+06"
                raise _error(_sentence(err)) from None
            if lies_in_0_1 and not 0.0 <= value <= 1.0:
                raise _error(f"θ values must lie between 0 (the source) and 1 (the target), got {value:g}. "
                             "(`vslerp grid --allow-extrapolation` renders θ outside 0..1.)")
            out.append(value)
        return out

    def render(self, source, target_image, prompt, thetas, alphas, seed, steps, guidance, size,
               mean_source=None, stats_file=None, *, target_kind: str = "auto", should_stop=None) -> dict:
        """Run the pipeline on cached embeddings; returns a result dict (images, metadata, ...).

        Requests arriving while the pipeline is busy are rendered in one batched call with the
        other waiting requests of the same steps, size, guidance and statistics (``self.queue``);
        each keeps its own seed, θ and α: the pixels are those of the request rendered alone.
        should_stop: optional callable polled after each denoising step; True stops the render
        (the page that asked for it was closed) with :class:`RenderCancelled` as a gr.Error.
        """
        import gradio as gr

        seed = self._seed(seed)
        steps, guidance, size = self._settings(steps, guidance, size)
        thetas = self._axis("θ", "theta", thetas, True)
        alphas = self._axis("α", "alpha", alphas, False)
        source_raw, source_ref = self.state.upload_embedding(source, "source")  # (D,)
        target_raw, target_ref = self._target(target_kind, target_image, prompt, seed)  # (D,)
        stats, mean_label, stats_path = self._statistics(mean_source, stats_file)
        job = {"source": source_raw, "target": target_raw, "thetas": thetas, "alphas": alphas, "seed": seed,
               "steps": steps, "guidance": guidance, "size": size, "stats": stats, "mean_label": mean_label,
               "should_stop": should_stop}
        key = (steps, size, guidance, stats.fingerprint, stats.metadata.get("source"))
        try:
            done = self.queue.submit(key, len(thetas) * len(alphas), job)
        except RenderCancelled:
            with self._lock:
                self.cancelled += 1
            raise _error("Render stopped: the page that asked for it was closed.") from None
        except gr.Error:
            raise
        except (ValueError, TypeError) as err:  # a value the checks above let through
            raise _error(_sentence(err)) from None
        out, ends_conf, describe, reference = done["out"], done["ends"], done["describe"], done["reference"]
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
            "seed": seed, "steps": steps, "size": size, "guidance": guidance,
            "batch_size": 8, "allow_extrapolation": False, "labels": not single,
            "conformity": [[float(c) for c in row] for row in out.conformity.tolist()],
            "pipeline": describe, "prior_steps": self.state.prior_steps, "tiny_random": self.tiny_random,
        }
        return {"images": list(out.images), "thetas": list(out.thetas), "alphas": list(out.alphas),
                "conformity": out.conformity.float(), "source_conformity": float(ends_conf[0]),
                "target_conformity": float(ends_conf[1]), "metadata": metadata,
                "method": describe.get("conformity"), "mean_source": describe.get("mean_source"),
                "mean_label": mean_label, "reference_conformity": reference}

    def _render_batch(self, jobs: list[dict]) -> list[dict]:
        """Render jobs sharing steps, size, guidance and statistics in one pipeline call (RenderQueue)."""
        first = jobs[0]
        with self.state.pipe_lock:
            try:
                try:
                    self.pipe.set_statistics(first["stats"])
                except ValueError as err:
                    raise _error(f"The image mean ({first['mean_label']}) does not fit this model: "
                                 f"{_sentence(err)}") from None
                requests = [{"source": job["source"], "target": job["target"], "thetas": job["thetas"],
                             "alphas": job["alphas"], "generator": torch.Generator().manual_seed(job["seed"])}
                            for job in jobs]
                outs = self.pipe.render_batch(
                    requests, num_inference_steps=first["steps"], guidance_scale=first["guidance"],
                    height=first["size"], width=first["size"],
                    callback_on_step_end=self._step_callback([job["should_stop"] for job in jobs]))
                describe = self.pipe.describe()
                reference = None if self.reference is None else self._reference_conformity(describe)
                return [{"out": out, "describe": describe, "reference": reference,
                         "ends": self.pipe.estimated_conformity(torch.stack([job["source"], job["target"]]))}
                        for job, out in zip(jobs, outs, strict=True)]  # ends: (2,)
            finally:
                self.pipe.set_statistics(self.default_statistics)

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
        rows = [f"| source | {result['source_conformity']:.4f} |",
                f"| target | {result['target_conformity']:.4f} |"]
        if len(conf) == 1:  # a sweep's cells are in its own table (sweep_table), one per θ, α
            rows.append(f"| result | {conf[0]:.4f} |")
        lines = [
            f"**Target:** {self._describe_target(meta['target'])} · **Image mean:** {result['mean_label']}",
            "",
            f"**Conformity**, {METHOD_WORDS.get(result['method'], result['method'])} "
            "(how typical an image is: its mean cosine to the others)",
            "",
            "| | conformity |", "|---|---|", *rows,
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
        ax.set_xlabel(f"conformity, {METHOD_WORDS.get(result['method'], result['method'])} "
                      f"({result['mean_label']})", fontsize=8)
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

    def sweep_table(self, result: dict | None) -> dict:
        """The sweep's conformity as a table: one row per θ, one column per α (a gr.Dataframe value)."""
        if not result or result.get("kind") != "sweep":
            return {"headers": ["θ \\ α"], "data": []}
        conf = result["conformity"].reshape(len(result["thetas"]), len(result["alphas"])).tolist()  # (T, A)
        return {"headers": ["θ \\ α", *(f"α = {a:g}" for a in result["alphas"])],
                "data": [[f"θ = {t:g}", *(round(float(c), 4) for c in row)]
                         for t, row in zip(result["thetas"], conf, strict=True)]}

    @staticmethod
    def caption(result: dict) -> str:
        """A gallery caption short enough to show whole under a thumbnail."""
        meta = result["metadata"]
        if result["kind"] == "result":
            head = f"θ={meta['thetas'][0]:g} α={meta['alphas'][0]:g}"
        else:
            head = f"sweep {len(meta['thetas'])}×{len(meta['alphas'])}"
        return f"{head} · seed {meta['seed']} · {meta['size']}px"

    @staticmethod
    def stale_sweep(readout: str | None) -> tuple:
        """After an edit: the sweep's read-out and grid marked as made with earlier settings."""
        import gradio as gr

        if not readout:  # no sweep yet
            return gr.update(), gr.update()
        note = STALE_NOTE
        text = readout if readout.startswith(note) else f"{note}\n\n{readout}"
        return text, gr.update(label="Sweep (earlier settings)")

    def details(self, result: dict | None, gallery: list | None):
        """After an edit: read-out, histogram, gallery, gallery state, downloads.

        After a sweep: its read-out (with the percentile range), the conformity table, histogram,
        gallery, gallery state and downloads, for the sweep's own panel. Every part degrades on its
        own: a part that fails shows a warning on the page and the others still update.
        """
        import gradio as gr

        gallery = list(gallery or [])
        readout, figure, files = "", None, []
        if result:
            shown = result.get("grid") or result["images"][0]
            history = [im for im, cap in gallery if cap.startswith("θ=")][-15:] + [shown]
            gallery = (gallery + [(shown, self.caption(result))])[-MAX_GALLERY:]
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
        if result and result.get("kind") == "sweep":
            table = gr.update(value=self.sweep_table(result), visible=True)
            return readout, table, plot, gallery, gallery, downloads, gr.update(label="Sweep")
        return readout, plot, gallery, gallery, downloads

    @staticmethod
    def roll_seed() -> int:
        return random.randint(0, 2**31 - 1)


from vslerp.ui.editor_app import build_editor, launch_kwargs  # noqa: E402 - the page uses the callbacks above
