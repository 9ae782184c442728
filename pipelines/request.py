"""One render request, checked once: the numbers and options of ``pipe(...)``, ``render_batch``,
the CLI, a jobs file, a sidecar and the editor, each refused with the field it is wrong in.

:class:`RenderRequest` holds what a request says as plain values (no tensors, no callbacks);
:meth:`RenderRequest.from_fields` checks each field by its type and range and the rules between
them, :meth:`RenderRequest.for_backend` what one backend takes. A :class:`RequestError` names
its ``field`` (the API's name); the CLI and the editor translate it into a flag or a label.
:class:`RenderSettings` is what a backend's ``_render_chunk`` receives besides the cells: a
checked request's numbers with the call's tensors and callback.
Torch-free at import: the CLI checks a request before any model loads.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from vslerp.defaults import SEED_LIMIT

from . import limits
from .inputs import first_refused, options_given, refused_option

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_INPUTS", "OPTION_FIELDS", "OUTPUT_TYPES", "RenderRequest", "RenderSettings", "RequestError", "RequestTypeError", "check_axis",
           "check_guidance", "check_options", "check_weights", "check_positive_int", "clone_generator", "check_seed", "check_steps", "denoise_steps"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_INPUTS = 16  # inputs of one mix
OPTION_FIELDS = ("strength", "prompt", "negative_prompt", "noise_level", "ip_adapter_scale", "true_cfg_scale")  # backend options


class RequestError(ValueError):
    """A request's field is wrong; ``field`` is its name as ``pipe(...)`` takes it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class RequestTypeError(RequestError, TypeError):
    """A request's field has the wrong type (a ``TypeError`` too, as Python's own)."""


def check_axis(name: str, values, allow_outside: bool) -> list[float]:
    """θ or α values (an ordered sequence, a numpy array, a tensor or one number) as a non-empty
    list of finite floats of sane magnitude, each in [0, 1] unless ``allow_outside``."""
    if isinstance(values, bool) or type(values).__name__ == "bool_":
        raise RequestTypeError(name, f"{name} must be a list of numbers, got {values!r}")
    if isinstance(values, numbers.Real):
        values = [values]  # one number (numpy scalars too)
    elif hasattr(values, "reshape") and hasattr(values, "tolist"):  # a numpy array or a tensor
        values = values.reshape(-1).tolist()
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        # a set, dict, generator or iterator has no order one can rely on (or is used up once)
        raise RequestTypeError(name, f"{name} must be an ordered list of numbers (list, tuple, range, numpy "
                               f"array or tensor), got {type(values).__name__}")
    if any(isinstance(v, bool) for v in values):
        raise RequestTypeError(name, f"{name} must be a list of numbers, got {list(values)!r}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RequestTypeError(name, f"{name} must be a list of numbers, got {values!r}") from None
    if not out:
        raise RequestError(name, f"{name} is empty: give at least one value")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise RequestError(name, f"{name} must be finite, got {bad[0]}")
    _magnitude(name, name[:-1] if name.endswith("s") else name, out)  # "theta 1e+308 is too large"
    outside = [v for v in out if not 0.0 <= v <= 1.0]
    if outside and not allow_outside:
        raise RequestError(name, f"{name} value {outside[0]:g} is outside [0, 1]: θ lies between 0 (the "
                           "source) and 1 (the target); pass allow_extrapolation=True to extrapolate")
    return out


def check_weights(weights, count: int | None = None) -> tuple[tuple[float, ...], ...]:
    """Mix weights — one row ``[w1, …, wN]`` or K rows (a nested list, numpy array or tensor) —
    as K rows of N finite non-negative floats, each normalised to sum 1; ``count``: the N the rows
    must have (one weight per input)."""
    if hasattr(weights, "tolist") and hasattr(weights, "reshape"):  # a numpy array or a tensor
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or not weights:
        raise RequestTypeError("weights", f"weights must be a row of numbers [w1, …, wN] or a list of such rows, "
                               f"got {weights!r}")
    rows = [weights] if not isinstance(weights[0], Sequence) or isinstance(weights[0], (str, bytes)) else weights
    out = []
    for k, row in enumerate(rows):
        where = f"weights row {k + 1}" if len(rows) > 1 else "weights"
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or any(
                isinstance(w, bool) or not isinstance(w, numbers.Real) for w in row):
            raise RequestTypeError("weights", f"{where} must be a list of numbers, got {row!r}")
        row = [float(w) for w in row]
        if count is not None and len(row) != count:
            raise RequestError("weights", f"{where} has {len(row)} weights for {count} inputs: give one weight per input")
        if len(row) != len(out[0] if out else row):
            raise RequestError("weights", f"{where} has {len(row)} weights, row 1 has {len(out[0])}")
        if len(row) < 2:
            raise RequestError("weights", f"{where} has {len(row)} weight: a mix takes at least 2 inputs")
        bad = [w for w in row if not math.isfinite(w) or w < 0]
        if bad:
            raise RequestError("weights", f"{where} must be finite and non-negative, got {bad[0]:g}")
        _magnitude("weights", "weight", row)
        total = math.fsum(row)
        if total <= 0:
            raise RequestError("weights", f"{where} is all zeros: give at least one positive weight")
        out.append(tuple(w / total for w in row))
    return tuple(out)


def _magnitude(field: str, name: str, value) -> None:
    """The core's bound on |θ|, |α| (:func:`vslerp.checks.check_magnitude`), as a field's error."""
    from vslerp.checks import check_magnitude  # imports torch: only once a value is checked

    try:
        check_magnitude(name, value)
    except ValueError as err:
        raise RequestError(field, str(err)) from None


def check_positive_int(name: str, value) -> int:
    """``value`` if it is an int ≥ 1 (not a bool)."""
    return check_steps(name, value, 1)


def check_steps(name: str, value, low: int) -> int:
    """An int ≥ ``low`` (UnCLIPScheduler divides by steps − 1: ``low`` 2)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise RequestError(name, f"{name} must be {kind}, got {value!r}")
    return value


def check_guidance(value) -> float:
    """A guidance scale: a finite number of a sane magnitude."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError("guidance_scale", f"guidance_scale must be a finite number, got {value!r}")
    _magnitude("guidance_scale", "guidance_scale", value)
    return float(value)


def check_seed(value, name: str = "seed") -> int:
    """A whole number in [0, SEED_LIMIT) (torch's manual_seed range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestTypeError(name, f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise RequestError(name, f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if not 0 <= value < SEED_LIMIT:
        raise RequestError(name, f"{name} must be in [0, 2**{SEED_LIMIT.bit_length() - 1}), got {value}")
    return value


def denoise_steps(steps: int, strength: float) -> int:
    """The steps the denoiser runs: all, or img2img's ``int(steps × strength)`` (diffusers' ``get_timesteps``)."""
    return steps if strength >= 1.0 else min(int(steps * strength), steps)


def check_options(strength, prompt, negative_prompt, noise_level, ip_adapter_scale, true_cfg_scale=1.0) -> dict:
    """The backend options by type and range, as a dict (strength a float)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise RequestError("strength", f"strength must be a number in (0, 1] (1: from pure noise), got {strength!r}")
    for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if value is not None and not isinstance(value, str):
            raise RequestTypeError(name, f"{name} must be a string or None, got {type(value).__name__}")
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or noise_level < 0:
        raise RequestError("noise_level", f"noise_level must be an int >= 0, got {noise_level!r}")
    if ip_adapter_scale is not None and (isinstance(ip_adapter_scale, bool)
                                         or not isinstance(ip_adapter_scale, (int, float))
                                         or not math.isfinite(ip_adapter_scale) or ip_adapter_scale < 0):
        raise RequestError("ip_adapter_scale", f"ip_adapter_scale must be a number >= 0, got {ip_adapter_scale!r}")
    if isinstance(true_cfg_scale, bool) or not isinstance(true_cfg_scale, (int, float)) \
            or not math.isfinite(true_cfg_scale) or not 0 <= true_cfg_scale <= 1e6:
        raise RequestError("true_cfg_scale", f"true_cfg_scale must be a number >= 0, got {true_cfg_scale!r}")
    return {"strength": float(strength), "prompt": prompt, "negative_prompt": negative_prompt,
            "noise_level": noise_level, "ip_adapter_scale": None if ip_adapter_scale is None else float(ip_adapter_scale),
            "true_cfg_scale": float(true_cfg_scale)}


@dataclass(frozen=True)
class RenderRequest:
    """What one render asks for, checked (:meth:`from_fields`); None: the backend's default."""

    thetas: tuple[float, ...] = (0.0, 0.5, 1.0)  # rows: 0 = source, 1 = target
    alphas: tuple[float, ...] = (0.0,)  # columns: 0 = plain SLERP (Eq. 12)
    num_inference_steps: int = 50
    guidance_scale: float | None = None
    height: int | None = None  # px
    width: int | None = None  # px
    max_batch_size: int = 8  # distinct cells per batch
    output_type: str = "pil"
    allow_extrapolation: bool = False  # θ outside [0, 1]
    prior_num_inference_steps: int = 25
    super_res_num_inference_steps: int = 7
    seed: int | None = None  # None: a generator of the caller's (or a random one)
    max_size: int = limits.MAX_SIZE  # px, the cap of one call
    max_cells: int = limits.MAX_CELLS  # θ × α, the cap of one call
    strength: float = 1.0  # img2img: < 1 starts from the photo noised to this strength
    prompt: str | None = None  # text conditioning (Stable unCLIP, IP-Adapter)
    negative_prompt: str | None = None
    noise_level: int = 0  # Stable unCLIP's image-embedding noise level
    ip_adapter_scale: float | None = None  # None: as loaded
    weights: tuple[tuple[float, ...], ...] | None = None  # a mix's rows (each sums to 1) instead of thetas
    true_cfg_scale: float = 1.0  # FLUX's true classifier-free guidance (on when > 1, with a negative_prompt)

    @classmethod
    def from_fields(cls, mapping: Mapping, origin: str = "") -> RenderRequest:
        """A request of ``mapping``'s fields (absent: the defaults), each checked by its type and
        range; ``origin`` prefixes every message (``"requests[2]: "``). An unknown field is refused."""
        known = {f.name for f in fields(cls)}
        unknown = [key for key in mapping if key not in known]
        if unknown:
            raise RequestError(unknown[0], f"{origin}unknown field {unknown[0]!r}")
        given = {f.name: f.default for f in fields(cls)} | dict(mapping)
        try:
            return cls(**cls._checked(given))
        except RequestError as err:
            raise type(err)(err.field, f"{origin}{err}") from None

    @staticmethod
    def _checked(v: dict) -> dict:
        """Every field of ``v`` checked, and the rules between fields."""
        if not isinstance(v["allow_extrapolation"], bool):
            raise RequestTypeError("allow_extrapolation", "allow_extrapolation must be True or False, "
                                   f"got {v['allow_extrapolation']!r}")
        v["thetas"] = tuple(check_axis("thetas", v["thetas"], v["allow_extrapolation"]))
        v["alphas"] = tuple(check_axis("alphas", v["alphas"], True))
        if v["weights"] is not None:
            v["weights"] = check_weights(v["weights"])
        for name in ("num_inference_steps", "max_batch_size", "max_size", "max_cells"):
            check_positive_int(name, v[name])
        for name in ("height", "width"):
            if v[name] is not None:
                check_positive_int(name, v[name])
        check_steps("prior_num_inference_steps", v["prior_num_inference_steps"], 2)
        check_steps("super_res_num_inference_steps", v["super_res_num_inference_steps"], 2)
        if v["guidance_scale"] is not None:
            v["guidance_scale"] = check_guidance(v["guidance_scale"])
        if v["output_type"] not in OUTPUT_TYPES:
            raise RequestError("output_type", f"output_type must be one of {OUTPUT_TYPES}, got {v['output_type']!r}")
        if v["seed"] is not None:
            v["seed"] = check_seed(v["seed"])
        v |= check_options(*(v[name] for name in OPTION_FIELDS))
        if v["strength"] < 1.0 and denoise_steps(v["num_inference_steps"], v["strength"]) < 1:
            raise RequestError("strength", f"strength {v['strength']:g} with num_inference_steps "
                               f"{v['num_inference_steps']} leaves no denoising step: int(steps × strength) "
                               "must be >= 1")
        try:
            rows = v["thetas"] if v["weights"] is None else v["weights"]
            limits.check_cells(len(rows) * len(v["alphas"]), max_cells=v["max_cells"])
        except ValueError as err:
            raise RequestError("max_cells", str(err)) from None
        return v

    @property
    def cells(self) -> int:
        return len(self.thetas if self.weights is None else self.weights) * len(self.alphas)

    @property
    def options(self) -> dict:
        """The backend options as ``pipe(...)`` takes them."""
        return {name: getattr(self, name) for name in OPTION_FIELDS}

    @property
    def denoise_steps(self) -> int:
        return denoise_steps(self.num_inference_steps, self.strength)

    def for_backend(self, backend: str, accepted, size_rule, min_steps: int = 1, default_size: int = 512,
                    default_guidance: float = 1.0) -> RenderRequest:
        """This request with the backend's size and guidance where it says None, checked against
        what ``backend`` takes: its options (``accepted``), its ``(factor, fixed)`` size rule and
        the cap ``max_size``, its denoiser's ``min_steps``."""
        given = options_given(*(getattr(self, name) for name in OPTION_FIELDS))
        refusal = refused_option(backend, accepted, given)
        if refusal is not None:
            raise RequestError(first_refused(accepted, given), refusal)
        out = replace(self, height=default_size if self.height is None else self.height,
                      width=default_size if self.width is None else self.width,
                      guidance_scale=default_guidance if self.guidance_scale is None else self.guidance_scale)
        factor, fixed = size_rule
        for name in ("height", "width"):
            try:
                limits.check_size(name, getattr(out, name), factor=factor, fixed=fixed, max_size=self.max_size)
            except ValueError as err:
                raise RequestError(name, str(err)) from None
        check_steps("num_inference_steps", self.num_inference_steps, min_steps)  # after the size: a size error names what to fix first
        return out


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """A new generator on ``generator``'s device in its current state (the original is not advanced)."""
    import torch

    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


def _finite(value) -> bool:
    """Whether ``value`` is not a floating-point tensor with NaN or Inf in it."""
    import torch

    return not (isinstance(value, torch.Tensor) and value.is_floating_point()) or bool(torch.isfinite(value).all())


@dataclass
class RenderSettings:
    """What every batch of cells of one call is rendered with."""

    num_inference_steps: int  # the denoiser's steps
    guidance_scale: float  # classifier-free guidance (on when > 1)
    height: int  # px
    width: int  # px
    output_type: str  # "pil" | "np" | "pt" | "latent"
    max_batch_size: int  # distinct cells per batch
    latents: torch.Tensor | None = None  # (1, C, h, w) initial latents of every cell, or None: drawn
    negative: torch.Tensor | None = None  # (D,) raw unconditional embedding, None: the backend's own
    # (the caller's argument until the call resolves it)
    callback_on_step_end: Callable | None = None  # callback(pipe, step, timestep, tensors) -> dict
    callback_tensor_inputs: list[str] = field(default_factory=list)  # the tensors it receives
    super_res_num_inference_steps: int = 7  # unCLIP's super-resolution steps
    # Backend options (each backend names the ones it takes in ``_backend_options``):
    strength: float = 1.0  # img2img: < 1 starts from the photo noised to this strength
    prompt: str | None = None  # text conditioning (Stable unCLIP, IP-Adapter)
    negative_prompt: str | None = None
    noise_level: int = 0  # Stable unCLIP's image-embedding noise level
    ip_adapter_scale: float | None = None  # IP-Adapter's scale (None: as loaded / set)
    true_cfg_scale: float = 1.0  # FLUX's true classifier-free guidance

    @classmethod
    def of_request(cls, request, latents=None, negative=None, callback_on_step_end=None,
                   callback_tensor_inputs=()) -> RenderSettings:
        """The settings of a checked :class:`~vslerp.pipelines.request.RenderRequest` (for its backend)."""
        return cls(num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                   height=request.height, width=request.width, output_type=request.output_type,
                   max_batch_size=request.max_batch_size, latents=latents, negative=negative,
                   callback_on_step_end=callback_on_step_end, callback_tensor_inputs=list(callback_tensor_inputs or []),
                   super_res_num_inference_steps=request.super_res_num_inference_steps, **request.options)

    def step_callback(self, pipe, step: int, timestep, tensors: dict) -> dict:
        """Call ``callback_on_step_end(pipe, step, timestep, tensors)`` (if any) and return the
        tensors it replaces ({} without one) — for every backend's diffusers loop. A tensor it
        returns, or changes in place, that is not finite (NaN/Inf latents would render black or
        NaN images) is a ``ValueError`` naming ``callback_on_step_end`` and the step."""
        callback = self.callback_on_step_end
        if callback is None:
            return {}
        finite_before = {key: _finite(value) for key, value in tensors.items()}
        out = callback(pipe, step, timestep, tensors)
        out = {} if out is None else out
        if not isinstance(out, dict):
            raise TypeError(f"callback_on_step_end must return a dict of tensors (or None), got {type(out).__name__}")
        for key, value in {**tensors, **out}.items():
            returned = key in out
            if not _finite(value) and (returned or finite_before.get(key, True)):
                how = "returned" if returned else "left in place"
                raise ValueError(f"callback_on_step_end {how} non-finite {key!r} (NaN or Inf) at step {step}: "
                                 "they would render NaN or black images")
        return out

    @property
    def denoise_steps(self) -> int:
        """The steps the denoiser runs (all, or img2img's ``int(steps × strength)``)."""
        return denoise_steps(self.num_inference_steps, self.strength)
