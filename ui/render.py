"""The render layer: a :class:`RenderSpec` says what one render is; this module is the only code
that loads a pipeline for it, resolves its defaults and calls the pipeline.

`vslerp grid`, `animate`, `batch` (one ``pipe(...)`` per spec: :func:`render`) and the editor
(many specs in one ``pipe.render_batch(...)``: :func:`render_many`) all render through here;
:mod:`vslerp.ui.sidecar` writes a spec, with what the pipeline made of it, beside the image.
Torch-free at import: the CLI's parser reads the defaults of :class:`RenderSpec`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

from vslerp.pipelines.request import check_seed  # the request's, re-exported for the front ends

__all__ = ["CpuEstimate", "RenderSpec", "batch_key", "check_seed", "cli_pipeline", "effective_dtype", "load_pipeline",
           "load_pipeline_for_cli", "render", "render_command", "render_for_cli", "render_many", "render_path",
           "tiny_random_args", "tiny_random_models", "tiny_random_record"]


@dataclass(frozen=True)
class RenderSpec:
    """One render: what it shows, how it is denoised, with which models (the sidecar's fields).

    An input is ``{"kind": "image", "path", "sha256"}`` (the editor adds ``pixels_sha256``; its
    path is the upload's own file name) or ``{"kind": "prompt", "prompt"}``. None where a default
    applies: :meth:`resolved` fills size and guidance from the loaded pipeline.
    """

    source: dict | None = None  # the image θ = 0 renders
    target: dict | None = None  # the image or prompt θ = 1 renders (a prompt through the prior)
    thetas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # rows: 0 = source, 1 = target
    alphas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)  # columns: 0 = plain SLERP (Eq. 12)
    seed: int = 0  # noise seed shared by every cell, 0 ≤ seed < SEED_LIMIT
    steps: int = 50  # denoising steps
    size: int | None = None  # px, square; None: the model's (Kandinsky 2.2: 512; unCLIP: 256)
    guidance: float | None = None  # guidance scale; None: the model's (4.0; unCLIP: 8.0)
    prior_steps: int = 25  # prior steps turning a prompt target into an image embedding
    model: str | None = None  # decoder hub id or folder; None: vslerp.defaults.DEFAULT_DECODER
    prior: str | None = None  # prior hub id or folder; None: vslerp.defaults.DEFAULT_PRIOR
    stats: str | None = None  # statistics file of the image mean; None: the pipeline's own mean
    dtype: str | None = None  # float16 | bfloat16 | float32; None: default_dtype(device)
    device: str | None = None  # cuda | cuda:N | mps | cpu; None: default_device()
    batch_size: int = 8  # cells denoised together (max_batch_size)
    allow_extrapolation: bool = False  # θ outside [0, 1] allowed
    labels: bool = True  # θ/α labels on the grid PNG
    # Backend options (a backend refuses, by name, those it does not take: pipe._backend_options)
    strength: float = 1.0  # img2img: < 1 starts every cell from the source photo noised to it
    prompt: str | None = None  # text conditioning of the UNet (Stable unCLIP, IP-Adapter); not the target
    negative_prompt: str | None = None  # its negative (Stable unCLIP, IP-Adapter)
    noise_level: int = 0  # Stable unCLIP's noise on the image embedding
    ip_adapter: tuple[str, str, str] | None = None  # (repo or folder, subfolder, weight) on an SD/SDXL base
    ip_adapter_scale: float | None = None  # the IP-Adapter's scale; None: as loaded (1.0)
    ip_adapter_image_encoder: str | None = None  # its image encoder (repo or folder); None: the adapter's default
    true_cfg_scale: float = 1.0  # FLUX's true classifier-free guidance (with --negative-prompt)
    # A mix (`vslerp mix`): pipe.mix of these inputs, one row per weight row, instead of θ rows
    inputs: tuple[dict, ...] | None = None  # the mix's inputs, each as source and target are
    weights: tuple[tuple[float, ...], ...] | None = None  # its rows (one weight per input)

    @property
    def cells(self) -> int:
        return len(self.thetas if self.weights is None else self.weights) * len(self.alphas)

    @property
    def options(self) -> dict:
        """The backend options as ``pipe(...)`` and ``pipe.render_batch(...)`` take them."""
        return {"strength": float(self.strength), "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "noise_level": int(self.noise_level), "ip_adapter_scale": self.ip_adapter_scale,
                "true_cfg_scale": float(self.true_cfg_scale)}

    def resolved(self, pipe) -> RenderSpec:
        """This spec with the model's own size and guidance where it says None."""
        size = pipe.default_size if self.size is None else int(self.size)
        guidance = pipe.default_guidance_scale if self.guidance is None else self.guidance
        return replace(self, size=size, guidance=float(guidance))


def effective_dtype(spec: RenderSpec) -> str:
    """The dtype a pipeline loaded for ``spec`` gets: its own, else the device's default rule."""
    if spec.dtype:
        return spec.dtype
    from vslerp.stats.encode import default_device, default_dtype, parse_device

    device = parse_device(spec.device) if spec.device else default_device()
    return str(default_dtype(device)).replace("torch.", "")


def load_pipeline(spec: RenderSpec, stats=None, progress: bool = True):
    """``VSlerpPipeline.from_pretrained`` of the spec's models, dtype and device (None: ``"auto"``),
    with the spec's IP-Adapter on an SD / SDXL base.

    stats: the image mean (a loaded Statistics; None: the spec's statistics file, else the
    pipeline's own). The model libraries' logs are quiet (:func:`~vslerp.ui.runtime.quiet_model_logs`);
    warnings raised while loading are shown only if loading works. Errors are the loader's.
    """
    import warnings

    import torch

    from vslerp.pipelines import VSlerpPipeline
    from vslerp.ui.runtime import quiet_model_logs

    if stats is None and spec.stats is not None:
        stats = Path(spec.stats)
    adapter = {}
    if spec.ip_adapter is not None:
        repo, subfolder, weight = spec.ip_adapter
        adapter = {"ip_adapter": repo, "ip_adapter_subfolder": subfolder or "", "ip_adapter_weight_name": weight,
                   "ip_adapter_image_encoder": spec.ip_adapter_image_encoder}
    with quiet_model_logs(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = VSlerpPipeline.from_pretrained(
            spec.model, prior=spec.prior, stats=stats,
            dtype=getattr(torch, spec.dtype) if spec.dtype else None,
            device=spec.device if spec.device is not None else "auto", **adapter)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", unit="step", dynamic_ncols=True)
    return pipe


def _pipeline_input(ref: dict):
    """A spec's input as ``pipe(...)`` takes it: an image path or a prompt."""
    return Path(ref["path"]) if ref["kind"] == "image" else ref["prompt"]


def render(pipe, spec: RenderSpec, *, statistics=None, callback=None, max_size: int | None = None,
           max_cells: int | None = None):
    """``pipe(source, target, ...)`` of ``spec`` (inputs read from their files or prompts), with its
    backend options (strength < 1: every cell starts from the source photo); a mix's spec
    (``weights``): ``pipe.mix(inputs, weights, ...)``.

    statistics: this call's image mean (None: the pipeline's). callback: ``callback_on_step_end``.
    max_size, max_cells: the limits of :mod:`vslerp.pipelines.limits` (None: its defaults).
    Returns the pipeline's ``VSlerpPipelineOutput`` (a mix: ``VSlerpMixOutput``).
    """
    import torch

    from vslerp.pipelines import limits

    spec = spec.resolved(pipe)
    extra = {"callback_on_step_end": callback} if callback is not None else {}
    if statistics is not None:
        extra["statistics"] = statistics
    call = dict(alphas=list(spec.alphas), num_inference_steps=int(spec.steps), guidance_scale=spec.guidance,
                height=spec.size, width=spec.size, generator=torch.Generator().manual_seed(int(spec.seed)),
                max_batch_size=int(spec.batch_size), prior_num_inference_steps=int(spec.prior_steps),
                max_size=limits.MAX_SIZE if max_size is None else int(max_size),
                max_cells=limits.MAX_CELLS if max_cells is None else int(max_cells), **spec.options, **extra)
    if spec.weights is not None:
        return pipe.mix([_pipeline_input(ref) for ref in spec.inputs], [list(row) for row in spec.weights], **call)
    return pipe(_pipeline_input(spec.source), _pipeline_input(spec.target), thetas=list(spec.thetas),
                allow_extrapolation=bool(spec.allow_extrapolation), **call)


def render_many(pipe, jobs, *, callback=None) -> list:
    """Many specs in one ``pipe.render_batch(...)``; each gets what :func:`render` gives it alone.

    jobs: ``(spec, source_raw (D,), target_raw (D,), statistics or None[, photo])`` tuples, the
    inputs already encoded (the editor's cache); a mix's spec (``weights``): ``(spec, inputs_raw
    (N, D), None, statistics or None[, photo])``. photo: the source photo (PIL or path) cells
    start from when ``spec.strength`` < 1 (default: the spec's source path). Their specs share
    steps, size, guidance, batch size and backend options (:func:`batch_key`; ``ValueError``
    otherwise); each keeps its own θ, α, seed, image mean and photo. Returns one
    ``VSlerpPipelineOutput`` (a mix: ``VSlerpMixOutput``) per job, in order.
    """
    import torch

    specs = [spec.resolved(pipe) for spec, *_ in jobs]
    shared = {batch_key(s) for s in specs}
    if len(shared) > 1:
        raise ValueError("render_many: the jobs differ in steps, size, guidance, batch size or backend options: "
                         f"{sorted(shared, key=repr)}")
    first = specs[0]
    requests = []
    for spec, (_, source, target, statistics, *photo) in zip(specs, jobs, strict=True):
        cells = ({"source": source, "target": target, "thetas": list(spec.thetas)} if spec.weights is None
                 else {"inputs": source, "weights": [list(row) for row in spec.weights]})
        request = {**cells, "alphas": list(spec.alphas), "generator": torch.Generator().manual_seed(int(spec.seed)),
                   "statistics": statistics}
        if spec.strength < 1:
            request["image"] = photo[0] if photo and photo[0] is not None else _pipeline_input(spec.source)
        requests.append(request)
    extra = {"callback_on_step_end": callback} if callback is not None else {}
    return pipe.render_batch(requests, num_inference_steps=int(first.steps), guidance_scale=first.guidance,
                             height=first.size, width=first.size, max_batch_size=int(first.batch_size),
                             **first.options, **extra)


def render_path(pipe, spec: RenderSpec, frames) -> list:
    """A path through the keyframes ``spec.inputs`` in one ``pipe.render_batch``: ``frames`` are
    ``(k, θ, α)``, each the cell vSLERP(K_k, K_k+1, θ, α) (K_N is K_0: a loop) rendered as
    :func:`render` renders that cell (the spec's seed; a prompt through the prior as a target is).
    Returns one ``VSlerpPipelineOutput`` (one cell) per frame."""
    import torch

    spec = spec.resolved(pipe)
    raws = [pipe.embed_input(_pipeline_input(ref), torch.Generator().manual_seed(int(spec.seed)),
                             int(spec.prior_steps)) for ref in spec.inputs]  # (D,) each
    return render_many(pipe, [(replace(spec, thetas=(theta,), alphas=(alpha,)), raws[k], raws[(k + 1) % len(raws)], None)
                              for k, theta, alpha in frames])


def batch_key(spec: RenderSpec) -> tuple:
    """What specs rendered in one ``render_many`` call share: steps, size, guidance, batch size and
    the backend options (two requests that differ in strength are never one batch)."""
    options = spec.options
    return (spec.steps, spec.size, spec.guidance, spec.batch_size, *(options[k] for k in sorted(options)))


# -- as the CLI uses it: errors as one line naming the option to change ---------------------
def tiny_random_args(args, recorded: dict | None = None) -> bool:
    """Apply --tiny-random (or a --from sidecar's, unless --model/--prior is given): refuse a model, default to TINY_RANDOM on the CPU."""
    from vslerp.ui.cli import CLIError
    from vslerp.ui.runtime import TINY_RANDOM

    given = [flag for flag in ("--model", "--prior", "--ip-adapter")
             if getattr(args, flag[2:].replace("-", "_"), None) is not None]
    if getattr(args, "tiny_random", False) and given:
        raise CLIError(f"--tiny-random builds its own tiny Kandinsky 2.2 (images are noise): drop {given[0]}")
    args.tiny_random = bool(getattr(args, "tiny_random", False) or (recorded or {}).get("tiny_random") and not given)
    if not args.tiny_random:
        return False
    for key, value in TINY_RANDOM.items():
        if recorded is None and getattr(args, key, None) is None:
            setattr(args, key, value)
    args.device = getattr(args, "device", None) or "cpu"
    return True


def tiny_random_record(args) -> dict:
    """A sidecar's extra keys under --tiny-random: labelled, no model folder (built per run)."""
    return {"tiny_random": True, "model": None, "prior": None} if getattr(args, "tiny_random", False) else {}


@contextlib.contextmanager
def tiny_random_models(spec: RenderSpec, tiny_random: bool):
    """``spec`` with the tiny random Kandinsky 2.2 of --tiny-random built for the block (before any process group)."""
    if not tiny_random:
        yield spec
        return
    import tempfile

    from vslerp.ui.runtime import build_tiny_random

    with tempfile.TemporaryDirectory(prefix="vslerp-tiny-", ignore_cleanup_errors=True) as root:
        prior, model = build_tiny_random(root)
        yield replace(spec, model=model, prior=prior)


@contextlib.contextmanager
def cli_pipeline(args, spec: RenderSpec, stats=None):
    """The pipeline of a grid/animate run (its --tiny-random model built for it), the model libraries quiet."""
    from vslerp.ui.runtime import quiet_model_logs

    with quiet_model_logs(), tiny_random_models(spec, args.tiny_random) as models:
        yield load_pipeline_for_cli(models, stats, progress=not args.no_progress)


def load_pipeline_for_cli(spec, stats=None, progress: bool = True):
    """:func:`load_pipeline`, its errors one CLI line naming --model, --prior or --stats and why."""
    from vslerp.stats.hub import ModelLoadError, ModelUnavailable
    from vslerp.stats.models import UnsupportedModel
    from vslerp.ui.cli import CLIError

    try:
        return load_pipeline(spec, stats=stats, progress=progress)
    except (ModelUnavailable, UnsupportedModel) as err:
        raise CLIError(str(err)) from err
    except ModelLoadError as err:
        raise CLIError(f"cannot load {err.option} {err.ident!r}: {err.reason}") from err
    except (OSError, ValueError) as err:
        if spec.stats is not None:
            raise CLIError(f"--stats {spec.stats}: {' '.join(str(err).split())}") from err
        raise


class CpuEstimate:
    """Step callback around ``then``: on the CPU, one stderr line extrapolating the first step when the run takes ≥ ``at_least`` s."""

    def __init__(self, cells: int, batch_size: int, size: int | None, then=None, *, clock=None,
                 at_least: float = 60.0) -> None:
        import time

        self.cells, self.batch_size, self.size, self.then, self.at_least = cells, batch_size, size, then, at_least
        self.clock = clock or time.monotonic
        self.start, self.said = self.clock(), False

    def __call__(self, pipe, step, timestep, tensors):
        if not self.said:
            self.said = True
            self._say(pipe, self.clock() - self.start)
        return self.then(pipe, step, timestep, tensors) if self.then is not None else {}

    def _say(self, pipe, first: float) -> None:
        import math
        import sys

        from tqdm.auto import tqdm

        steps = int(getattr(pipe, "num_timesteps", None) or 0)
        if not steps or pipe.execution_device().type != "cpu":
            return
        total = first * steps * math.ceil(self.cells / max(1, min(self.batch_size, self.cells)))
        if total < self.at_least:
            return
        about = f"{total / 3600:.1f} h" if total >= 5400 else f"{math.ceil(total / 60)} min"
        size = f" at {self.size} px" if self.size else ""
        tqdm.write(f"vslerp: {self.cells} cells × {steps} steps{size} on CPU: about {about} (from the first "
                   "step); use --size/--steps or a GPU", file=sys.stderr)  # above the progress bar


def render_for_cli(pipe, spec, *, max_size: int | None = None, max_cells: int | None = None,
                   callback=None, estimate: CpuEstimate | None = None):
    """:func:`render` with the CLI's limits and :class:`CpuEstimate` (``estimate``: a run's own); an out-of-memory is one line."""
    from vslerp.pipelines import limits
    from vslerp.ui.cli import CLIError

    if pipe.backend != "unclip":  # unCLIP takes no step callback
        estimate = estimate or CpuEstimate(spec.cells, spec.batch_size, spec.resolved(pipe).size)
        estimate.then, callback = callback, estimate
    try:
        return render(pipe, spec, callback=callback, max_size=max_size, max_cells=max_cells)
    except limits.RenderOutOfMemory as err:
        lower = limits.out_of_memory(err.height, err.width, err.batch, lower="--batch-size ",
                                     tiling=None)
        raise CLIError(str(lower)) from err


def render_command(args, spec, meta, stats):
    """A render command's work once its checks pass (grid, mix): the pipeline of ``spec`` loaded, a
    ``--from`` sidecar's (``meta``) image-mean fingerprint checked, the render; (pipe, output)."""
    from vslerp.ui.cli import CLIError

    with cli_pipeline(args, spec, stats) as pipe:
        expected = ((meta or {}).get("stats") or {}).get("fingerprint")
        if expected and pipe.describe().get("stats_fingerprint") != expected:
            raise CLIError(f"--from {args.from_}: the image-mean statistics differ from the ones it "
                           f"was rendered with (fingerprint {expected[:12]}…)")
        return pipe, render_for_cli(pipe, spec, max_size=args.max_size, max_cells=args.max_cells)
