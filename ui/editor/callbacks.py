"""The editor's callbacks: vSLERP(source, target, θ, α) (paper Eq. 12) from cached embeddings.

:class:`Editor` checks an event's values, encodes through the cache (:mod:`.cache`), and renders
through the render layer (:func:`vslerp.ui.render.render_many`, concurrent requests batched by
:mod:`.batching`), each request with its own image mean (per-call statistics: the shared pipeline
is never changed). What a result shows (read-out, histogram, downloads) is :mod:`.results`'.
Mistakes raise :class:`~.messages.EditorError`; no Gradio here but the result views'.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from vslerp.ui.editor.batching import RenderQueue
from vslerp.ui.editor.cache import EditorState
from vslerp.ui.editor.messages import (
    EditorError,
    RenderCancelled,
    display_name,
    mentioning,
    sentence,
)
from vslerp.ui.editor.results import ResultViews
from vslerp.ui.editor.uploads import (
    as_upload,
    check_image,
    client_upload,
    discard,
    open_upload,
    refused,
)
from vslerp.ui.editor.values import (
    MAX_SIZE,
    MAX_STEPS,
    axis,
    backend_options,
    mean_source_value,
    seed_value,
    settings,
    text_value,
)

__all__ = ["MAX_BATCH_CELLS", "MAX_CELLS", "MAX_SIZE", "MAX_STEPS", "MEAN_WORDS", "Editor"]

MAX_CELLS = 64  # cells of one sweep
MAX_BATCH_CELLS = 16  # cells of concurrent requests rendered in one batched call
_STATS_CACHE_SIZE = 4  # uploaded statistics files kept loaded (each holds a D×D sum)
_REFERENCE_CACHE_SIZE = 8  # reference conformity arrays kept (one per statistics fingerprint)

# What the statistics' "source" is, in words (the technical names stay in the metadata).
MEAN_WORDS = {"prior_clip_mean": "the prior's training mean", "dataset": "dataset statistics",
              "tensor": "a given mean vector",
              "image_normalizer_mean": "the model's image-normaliser mean"}


class Editor(ResultViews):
    """The editor's callbacks (pure functions of their inputs plus the shared cache).

    pipe: a loaded ``VSlerpPipeline``. spec: the :class:`~vslerp.ui.render.RenderSpec` the editor
    starts from (models, statistics file, dtype, prior steps, batch size; default: the pipeline's
    own). statistics: the startup image mean (a Statistics, e.g. ``spec.stats`` loaded; default:
    the pipeline's), passed to each render: the pipeline is never changed. reference: optional (N, D) raw image embeddings whose conformity is the histogram's
    reference, scored with each edit's own statistics. tiny_random: label results as the
    noise-only smoke test. prior_steps, stats_path: override the spec's. ``steps_run`` /
    ``cancelled`` count denoising steps and cancelled renders; max_batch: cells of concurrent
    requests rendered in one call (1: one request at a time; ``queue.batches`` counts batches).
    out_dir: the results folder (default: a temporary folder of its own, removed with the editor).
    """

    def __init__(self, pipe, *, spec=None, statistics=None, reference: torch.Tensor | None = None,
                 tiny_random: bool = False,
                 prior_steps: int | None = None, out_dir: str | Path | None = None,
                 stats_path: str | Path | None = None, max_batch: int = MAX_BATCH_CELLS) -> None:
        from vslerp.ui.render import RenderSpec

        spec = spec or RenderSpec()
        prior_steps = prior_steps or (2 if tiny_random else spec.prior_steps)  # tiny: a smoke test
        if stats_path is not None:
            spec = replace(spec, stats=str(Path(stats_path).resolve()))
        self.spec = replace(spec, prior_steps=int(prior_steps))
        self.pipe = pipe
        self.state = EditorState(pipe, prior_steps=self.spec.prior_steps)
        self.tiny_random = tiny_random
        self.default_statistics = pipe.statistics if statistics is None else pipe.check_statistics(statistics)
        self._stats_cache: OrderedDict[str, object] = OrderedDict()
        self._reference_cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()  # guards the caches above and the counters
        self.steps_run = 0  # denoising steps run (all renders)
        self.cancelled = 0  # renders stopped (their page was closed or Stop pressed)
        self._stops: dict[str, int] = {}  # session → Stop presses
        self.reference = None if reference is None else torch.as_tensor(reference).float()  # (N, D) raw
        self.reference_conformity = None  # (N,) under the startup statistics
        if self.reference is not None:
            self.reference_conformity = self._reference_conformity(self.default_statistics)
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="vslerp-editor-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if out_dir is None:  # a folder of its own: removed with the editor, at exit at the latest
            weakref.finalize(self, shutil.rmtree, str(self.out_dir), True)
        self.queue = RenderQueue(self._render_batch, max_cells=max_batch)

    # -- inputs ---------------------------------------------------------------------------
    def upload(self, payload, name: str):
        """A Python caller's file value as an :class:`~.uploads.Upload` (data URLs land in
        ``out_dir``); an HTTP client's values went through :meth:`client_files` first."""
        return as_upload(payload, self.out_dir / "uploads", name)

    @contextmanager
    def client_files(self, source, target_image, stats_file):
        """An HTTP event's file values (source, target image, statistics file) as uploads
        (:func:`~.uploads.client_upload`: Gradio's uploads or data URLs only, never a server path);
        the files written from data URLs are deleted when the event is over."""
        folder = self.out_dir / "uploads"
        files = []
        try:
            for payload, name in ((source, "source image"), (target_image, "target image"),
                                  (stats_file, "statistics file")):
                files.append(client_upload(payload, folder, name))
            yield tuple(files)
        finally:
            for upload in files:
                if upload is not None and upload.temporary:
                    discard(upload)

    def check_upload(self, payload, name: str) -> None:
        """An image just uploaded to the page, refused at once unless it is a readable image of at
        most ``MAX_PIXELS`` (the header only: nothing is decoded)."""
        if payload is None:
            return
        upload = client_upload(payload, self.out_dir / "uploads", name)
        try:
            check_image(upload, name)
        finally:
            if upload is not None and upload.temporary:
                discard(upload)

    def mean_statistics(self, mean_source: str | None, stats_file) -> tuple[object, str, str | None]:
        """(Statistics, label, path for the metadata) of the chosen mean source, checked against
        the model (``pipe.check_statistics``: nothing on the pipeline changes)."""
        from vslerp.stats import Statistics, load
        from vslerp.ui.images import file_sha256

        mean_source = mean_source_value(mean_source, getattr(self.pipe, "prior", None) is not None)
        if mean_source == "prior clip_mean":
            stats = Statistics.from_prior(self.pipe.prior, model_id=self.pipe.model_ids.get("prior"))
            label, path = MEAN_WORDS["prior_clip_mean"], None
        elif mean_source == "statistics file":
            stats_file = self.upload(stats_file, "statistics file")
            if not stats_file:
                raise EditorError("Mean source 'statistics file': upload a .safetensors statistics file "
                                  "(Advanced → Statistics file).")
            path, name = str(stats_file), display_name(stats_file)
            try:
                key = file_sha256(path)  # by content: a data URL's temporary name may come again
                with self._lock:
                    stats = self._stats_cache.get(key)
                if stats is None:
                    stats = load(path)
                    with self._lock:
                        self._stats_cache[key] = stats
                        while len(self._stats_cache) > _STATS_CACHE_SIZE:
                            self._stats_cache.popitem(last=False)
            except (OSError, ValueError) as err:
                raise refused(stats_file, EditorError(f"Cannot read the statistics file: "
                                                      f"{mentioning(err, path, name)}")) from None
            label, path = f"{MEAN_WORDS['dataset']} from {name}", name
        else:
            return self.default_statistics, self.startup_mean_label(), self.spec.stats
        try:
            return self.pipe.check_statistics(stats), label, path
        except (ValueError, TypeError) as err:
            raise refused(stats_file, EditorError(f"The image mean ({label}) does not fit this model: "
                                                  f"{sentence(err)}")) from None

    def startup_mean_label(self) -> str:
        """The startup image mean in words: "the prior's training mean", "dataset statistics from F"."""
        source = self.default_statistics.metadata.get("source")
        label = MEAN_WORDS.get(source, str(source))
        if self.spec.stats:
            label = f"{label} from {Path(self.spec.stats).name}"
        return label

    def _target(self, kind: str, target_image, prompt: str | None, seed: int) -> tuple[torch.Tensor, dict]:
        """(raw (D,), input) of the target.

        kind "prompt" / "image" (the page's Target choice) uses that input only; "auto" (the API)
        takes whichever of the two is given and refuses both.
        """
        prompt = (text_value("target_prompt", prompt) or "").strip()
        if kind not in ("auto", "prompt", "image"):
            raise EditorError(f"Target must be 'prompt' or 'image', got {kind!r}.")
        if kind == "auto":
            if target_image is not None and prompt:
                raise EditorError("Give a target image or a target prompt, not both.")
            kind = "image" if target_image is not None else "prompt"
        if kind == "image":
            if target_image is None:
                raise EditorError("Target is 'image': upload a target image (or choose Target: prompt).")
            return self.state.upload_embedding(target_image, "target")
        if not prompt:
            raise EditorError("No target: type a target prompt (or choose Target: image and upload one).")
        return self.state.prompt_embedding(prompt, seed), {"kind": "prompt", "prompt": prompt}

    # -- rendering ------------------------------------------------------------------------
    def render(self, source, target_image, prompt, thetas, alphas, seed, steps, guidance, size,
               mean_source=None, stats_file=None, *, target_kind: str = "auto", should_stop=None,
               report=None, strength=1.0, text_prompt=None, negative_prompt=None, noise_level=0,
               ip_adapter_scale=None, true_cfg_scale=1.0) -> dict:
        """Run the render layer on cached embeddings; returns a result dict (images, metadata, ...).

        ``prompt`` is the target prompt (through the prior); ``text_prompt`` / ``negative_prompt``
        the UNet's text conditioning, with strength (below 1: from the source photo), noise level
        and IP-Adapter scale the backend options (:func:`~.values.backend_options`: refused, by
        name, where the backend does not take them). Requests arriving while the pipeline is busy
        are rendered in one batched call with the other waiting requests of the same steps, size,
        guidance and backend options (``self.queue``); each keeps its own seed, θ, α, image mean
        and photo: the pixels are those of the request rendered alone. should_stop: optional
        callable polled after each denoising step; True stops the render (the page that asked
        for it was closed, or Stop pressed): an :class:`EditorError` saying so. report: optional
        ``report(text, fraction)`` of the progress ("Denoising 12/30 · about 8 s left", or the
        renders ahead while waiting).
        """
        from vslerp.pipelines.request import denoise_steps
        from vslerp.ui.render import batch_key
        from vslerp.ui.sidecar import sidecar

        def waiting(ahead: int) -> None:
            if report is not None and ahead:
                report(f"Waiting: {ahead} render{'s' if ahead != 1 else ''} ahead of you", None)

        waiting(self.queue.ahead())  # encoding waits for the model too
        seed = seed_value(seed)
        steps, guidance, size = settings(steps, guidance, size)
        options = backend_options(self.pipe, steps, strength, text_prompt, negative_prompt, noise_level,
                                  ip_adapter_scale, true_cfg_scale)
        thetas = axis("θ", "theta", thetas, True)
        alphas = axis("α", "alpha", alphas, False)
        mean_source = mean_source_value(mean_source, getattr(self.pipe, "prior", None) is not None)
        prompt = text_value("target_prompt", prompt)
        upload = self.upload(source, "source")
        source_raw, source_ref = self.state.upload_embedding(upload, "source")  # (D,)
        target_raw, target_ref = self._target(target_kind, self.upload(target_image, "target image"),
                                              prompt, seed)  # (D,)
        stats, mean_label, stats_path = self.mean_statistics(mean_source, stats_file)
        spec = replace(self.spec, source=source_ref, target=target_ref, thetas=thetas, alphas=alphas,
                       seed=seed, steps=steps, guidance=guidance, size=size, stats=stats_path,
                       labels=len(thetas) * len(alphas) > 1, **options)
        job = {"spec": spec, "source": source_raw, "target": target_raw, "statistics": stats,
               "photo": open_upload(upload, "source") if spec.strength < 1 else None,  # checked, decoded
               "should_stop": should_stop, "report": report,
               "total": denoise_steps(steps, spec.strength)}

        try:
            done = self.queue.submit(batch_key(spec.resolved(self.pipe)), spec.cells, job, waiting, should_stop)
        except RenderCancelled:
            raise self.stopped() from None
        except (ValueError, TypeError) as err:  # a value the checks above let through
            raise EditorError(sentence(err)) from None
        out = done["out"]
        metadata = sidecar(spec, self.pipe, out, "ui", statistics=stats, tiny_random=self.tiny_random)
        describe = metadata["pipeline"]
        return {"images": list(out.images), "thetas": list(out.thetas), "alphas": list(out.alphas),
                "conformity": out.conformity.float(), "source_conformity": float(done["ends"][0]),
                "target_conformity": float(done["ends"][1]), "metadata": metadata,
                "method": describe.get("conformity"), "mean_source": describe.get("mean_source"),
                "mean_label": mean_label, "reference_conformity": done["reference"]}

    def stop(self, session: str) -> None:
        """Stop ``session``'s renders (the Stop button): at the next denoising step, or before they start."""
        with self._lock:
            self._stops[session] = self._stops.get(session, 0) + 1
        self.queue.wake()

    def stopped(self) -> EditorError:
        """A render was stopped (counted): the error its event ends with."""
        with self._lock:
            self.cancelled += 1
        return EditorError("Render stopped.")

    def stop_probe(self, session: str | None):
        """A callable telling whether Stop was pressed in ``session`` since now (None: no session)."""
        if session is None:
            return None
        pressed = self._stops.get(session, 0)
        return lambda: self._stops.get(session, 0) > pressed

    def _reference_conformity(self, stats):
        """Conformity (N,) of the reference under ``stats`` (cached per fingerprint and method)."""
        key = (stats.fingerprint, self.pipe.conformity_method(stats))
        with self._lock:
            if key in self._reference_cache:
                self._reference_cache.move_to_end(key)
                return self._reference_cache[key]
        values = self.pipe.estimated_conformity(self.reference, statistics=stats).numpy()  # (N,)
        with self._lock:
            self._reference_cache[key] = values
            while len(self._reference_cache) > _REFERENCE_CACHE_SIZE:
                self._reference_cache.popitem(last=False)
        return values

    def step_callback(self, jobs: list[dict]):
        """Counts steps, reports each job's progress; stops the batch (RenderCancelled) once every
        request in it was stopped."""
        start = time.monotonic()

        def on_step_end(pipe, step, timestep, tensors):
            with self._lock:
                self.steps_run += 1
            for job in jobs:
                done, total = min(step + 1, job["total"]), job["total"]
                if job["report"] is not None:
                    left = (time.monotonic() - start) / done * (total - done)
                    job["report"](f"Denoising {done}/{total} · about {left:.0f} s left", done / total)
            if all(job["should_stop"] is not None and job["should_stop"]() for job in jobs):
                raise RenderCancelled
            return {}

        return on_step_end

    def _render_batch(self, jobs: list[dict]) -> list[dict]:
        """Render jobs (edits, sweeps, mixes) sharing steps, size, guidance and backend options in
        one call (the RenderQueue's batch); with strength below 1 each starts from its own photo."""
        from vslerp.ui.render import render_many

        raws = [torch.stack(job["inputs"] if "inputs" in job else [job["source"], job["target"]]) for job in jobs]
        with self.state.model_lock:  # a mix's inputs (N, D) in the source's place (render_many)
            outs = render_many(self.pipe, [(job["spec"], *((raw, None) if "inputs" in job else raw), job["statistics"],
                                            job.get("photo")) for job, raw in zip(jobs, raws, strict=True)],
                               callback=self.step_callback(jobs))
            return [{"out": out, "ends": self.pipe.estimated_conformity(raw, statistics=job["statistics"]),  # (N,)
                     "reference": None if self.reference is None else self._reference_conformity(job["statistics"])}
                    for job, raw, out in zip(jobs, raws, outs, strict=True)]

    # -- event callbacks ------------------------------------------------------------------
    def edit(self, source, target_image, target_prompt, theta, alpha, seed, steps=2, guidance=4.0,
             size=64, mean_source=None, stats_file=None, *, target_kind: str = "auto", should_stop=None,
             **options):
        """One cell θ, α → (image, result dict). The `/edit` API endpoint. options: the backend
        options of :meth:`render` (strength, text_prompt, negative_prompt, noise_level, ...)."""
        result = self.render(source, target_image, target_prompt, [theta], [alpha], seed, steps, guidance,
                             size, mean_source, stats_file, target_kind=target_kind, should_stop=should_stop,
                             **options)
        result["kind"] = "result"
        return result["images"][0], result

    def sweep(self, source, target_image, target_prompt, thetas_text, alphas_text, seed, steps=2,
              guidance=4.0, size=64, mean_source=None, stats_file=None, *, target_kind: str = "auto",
              should_stop=None, **options):
        """A θ × α grid in one batched pipeline call → (labelled grid image, result dict).

        θ must lie in 0..1 (the source .. the target); α may leave the paper's useful range
        −2..2 (research use), which the read-out then notes.
        """
        from vslerp.ui.images import make_grid
        from vslerp.ui.options import parse_values

        try:
            thetas = parse_values(text_value("thetas", thetas_text) or "", "θ values")
            alphas = parse_values(text_value("alphas", alphas_text) or "", "α values")
        except ValueError as err:
            raise EditorError(str(err)) from None
        if len(thetas) * len(alphas) > MAX_CELLS:
            raise EditorError(f"A sweep has at most {MAX_CELLS} cells, got {len(thetas)}×{len(alphas)}.")
        result = self.render(source, target_image, target_prompt, thetas, alphas, seed, steps, guidance,
                             size, mean_source, stats_file, target_kind=target_kind, should_stop=should_stop,
                             **options)
        result["kind"] = "sweep"
        grid = make_grid(result["images"], result["thetas"], result["alphas"])
        result["grid"] = grid
        return grid, result

    @staticmethod
    def roll_seed() -> int:
        return random.randint(0, 2**31 - 1)
