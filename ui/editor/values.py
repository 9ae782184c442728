"""The values of an editor event, checked as the page's controls bound them (API callers too).

Seed, steps, guidance, size, θ and α, the image mean's source, the prompts and the backend
options (strength, text prompt, negative prompt, noise level, IP-Adapter scale): each bad value —
of the wrong type (a number control's value sent as text), not one of a choice's values, a text
that is not valid Unicode, out of bounds — is an :class:`~.messages.EditorError` naming the
control by its label on the page (:data:`LABELS`), before anything is encoded or rendered.
"""

from __future__ import annotations

import math
import numbers

from vslerp.ui.editor.messages import EditorError, sentence

__all__ = ["LABELS", "MAX_SIZE", "MAX_STEPS", "MEAN_SOURCES", "MIN_STRENGTH", "OPTION_LABELS", "axis",
           "backend_options", "a_number", "mean_source_value", "seed_value", "settings", "text_value"]

MAX_STEPS = 200  # denoising steps of one render
MAX_SIZE = 2048  # px, the editor's largest render
MIN_STRENGTH = 0.05  # the Strength slider's lowest
# the page's names of the backend options (pipe._backend_options), for the messages
OPTION_LABELS = {"strength": "Strength below 1", "prompt": "A text prompt", "negative_prompt": "A negative prompt",
                 "noise_level": "A noise level", "ip_adapter_scale": "An IP-Adapter scale",
                 "true_cfg_scale": "A true CFG scale above 1"}
# The page's labels of its controls (layout uses them; the messages name a control by them).
LABELS = {"theta": "Towards the target (θ)", "alpha": "Pull towards the typical image (α)", "seed": "Seed",
          "steps": "Steps", "guidance": "Guidance", "size": "Size (px)", "strength": "Strength",
          "noise_level": "Noise level", "ip_adapter_scale": "IP-Adapter scale", "true_cfg_scale": "True CFG scale",
          "target_prompt": "Target prompt",
          "text_prompt": "Text prompt (conditions the UNet; not the target)", "negative_prompt": "Negative prompt",
          "mean_source": "Typical image (what α pulls towards)",
          "thetas": "Towards the target (θ values, 0..1: a,b,c or start:stop:count)",
          "alphas": "Pull towards the typical image (α values)", "weight": "A mix weight",
          "mix_prompt": "A mix prompt"}
# The Image mean choice's values (the API's too); "prior clip_mean" only where the model has a prior.
MEAN_SOURCES = ("startup", "prior clip_mean", "statistics file")


def _shown(value) -> str:
    return f"the text {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def a_number(key: str, value):
    """``value`` as a number control sends it (an int or float, not text nor a bool), else an
    EditorError naming the control ``LABELS[key]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise EditorError(f"{LABELS[key]} must be a number, got {_shown(value)}.")
    return value


def text_value(key: str, value) -> str | None:
    """``value`` as a text box sends it: None or a str of valid Unicode (no lone surrogate, which
    no tokenizer takes), else an EditorError naming the control ``LABELS[key]``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise EditorError(f"{LABELS[key]} must be text, got {_shown(value)}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(value[err.start])
        raise EditorError(f"{LABELS[key]} holds a character that is not text (U+{code:04X}, "
                          "a lone surrogate): type it again.") from None
    return value


def mean_source_value(value, has_prior: bool) -> str:
    """The Image mean choice: one of :data:`MEAN_SOURCES` (None: "startup"), else an EditorError
    in the page's words."""
    choices = [c for c in MEAN_SOURCES if has_prior or c != "prior clip_mean"]
    if value is None:
        return "startup"
    if not isinstance(value, str) or value not in choices:
        raise EditorError(f"{LABELS['mean_source']} must be one of {', '.join(map(repr, choices))}, "
                          f"got {_shown(value)}.")
    return value


def seed_value(seed) -> int:
    """The seed as a whole number in [0, SEED_LIMIT)."""
    from vslerp.defaults import SEED_LIMIT
    from vslerp.ui.render import check_seed

    a_number("seed", seed)  # a Number control sends a number, never "42"
    try:
        return check_seed(seed, "the seed")
    except (TypeError, ValueError):
        raise EditorError(f"The seed must be a whole number from 0 to {SEED_LIMIT - 1:,}, got {seed!r}.") from None


def settings(steps, guidance, size) -> tuple[int, float, int]:
    """Steps, guidance and size checked as the page's sliders bound them (API callers too)."""
    from vslerp.checks import check_magnitude

    def whole(name, value, low, high):
        a_number(name.lower(), value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EditorError(f"{name} must be a number, got {value!r}.") from None
        if not low <= number <= high or number != int(number):  # NaN fails the first test
            raise EditorError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        return int(number)

    steps = whole("Steps", steps, 1, MAX_STEPS)
    size = whole("Size", size, 64, MAX_SIZE)
    if size % 64:
        raise EditorError(f"Size must be a multiple of 64 px (as the Size slider), got {size}.")
    a_number("guidance", guidance)
    try:
        guidance = float(guidance)
        check_magnitude("guidance", guidance)
    except (TypeError, ValueError) as err:
        raise EditorError(f"Guidance must be a number of at most 1e6, got {guidance!r} ({err}).") from None
    return steps, guidance, size


def axis(name: str, symbol: str, values, lies_in_0_1: bool) -> tuple[float, ...]:
    """θ or α values as floats, each named if it is not a number (θ: in 0..1); symbol: "theta"
    or "alpha" (a key of :data:`LABELS` too)."""
    from vslerp.pipelines.request import check_axis

    out = []
    for value in values:
        a_number(symbol, value)
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise EditorError(f"{name} must be a number, got {value!r}.") from None
    try:
        check_axis(f"{symbol}s", out, not lies_in_0_1)
    except ValueError as err:  # "alpha 1e+308 is too large: |alpha| <= 1e+06"
        text = str(err).split("; pass allow_extrapolation")[0]
        raise EditorError(sentence(f"{LABELS[symbol]}: {text}")) from None
    return tuple(out)


def _number(key: str, value, low: float, high: float) -> float:
    name = LABELS[key]
    a_number(key, value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditorError(f"{name} must be a number, got {value!r}.") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise EditorError(f"{name} must be from {low:g} to {high:g}, got {value!r}.")
    return number


def backend_options(pipe, steps: int, strength=1.0, prompt=None, negative_prompt=None, noise_level=0,
                    ip_adapter_scale=None, true_cfg_scale=1.0) -> dict:
    """The backend options of an event as :class:`~vslerp.ui.render.RenderSpec` fields.

    strength in (0, 1] (below 1: img2img from the source photo, at least one denoising step);
    empty prompts are None; noise level a whole number ≥ 0; IP-Adapter scale None or a number
    ≥ 0. An option away from its default that ``pipe``'s backend does not take
    (``pipe._backend_options``) is refused, by name.
    """
    if strength is None:
        strength = 1.0
    strength = _number("strength", strength, 0.0, 1.0)
    if strength == 0.0:
        raise EditorError("Strength must be above 0 (1: from pure noise; lower keeps more of the photo).")
    if strength < 1 and int(steps * strength) < 1:
        raise EditorError(f"Strength {strength:g} with {steps} steps leaves no denoising step "
                          "(steps × strength must be ≥ 1): raise the steps or the strength.")
    texts = {}
    for key, label, value in (("prompt", "text_prompt", prompt), ("negative_prompt", "negative_prompt",
                                                                  negative_prompt)):
        value = text_value(label, value)
        texts[key] = (value.strip() or None) if value is not None else None
    level = _number("noise_level", 0 if noise_level is None else noise_level, 0, 10**6)
    if level != int(level):
        raise EditorError(f"Noise level must be a whole number, got {noise_level!r}.")
    scale = None if ip_adapter_scale in (None, "") else _number("ip_adapter_scale", ip_adapter_scale, 0.0, 1e6)
    cfg = _number("true_cfg_scale", 1.0 if true_cfg_scale in (None, "") else true_cfg_scale, 0.0, 100.0)
    options = {"strength": strength, **texts, "noise_level": int(level), "ip_adapter_scale": scale,
               "true_cfg_scale": cfg}
    from vslerp.pipelines.inputs import first_refused, options_given

    refused = first_refused(getattr(pipe, "_backend_options", ()), options_given(**options))
    if refused is not None:
        raise EditorError(f"{OPTION_LABELS[refused]} is not supported by this model ({pipe.backend}).")
    return options
