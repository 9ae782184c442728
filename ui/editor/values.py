"""The values of an editor event, checked as the page's controls bound them (API callers too).

Seed, steps, guidance, size, θ and α, and the backend options (strength, text prompt, negative
prompt, noise level, IP-Adapter scale): each bad value is an :class:`~.messages.EditorError`
naming it, before anything is encoded or rendered.
"""

from __future__ import annotations

import math

from vslerp.ui.editor.messages import EditorError, sentence

__all__ = ["MAX_SIZE", "MAX_STEPS", "MIN_STRENGTH", "OPTION_LABELS", "axis", "backend_options", "seed_value", "settings"]

MAX_STEPS = 200  # denoising steps of one render
MAX_SIZE = 2048  # px, the editor's largest render
MIN_STRENGTH = 0.05  # the Strength slider's lowest
# the page's names of the backend options (pipe._backend_options), for the messages
OPTION_LABELS = {"strength": "Strength below 1", "prompt": "A text prompt", "negative_prompt": "A negative prompt",
                 "noise_level": "A noise level", "ip_adapter_scale": "An IP-Adapter scale"}


def seed_value(seed) -> int:
    """The seed as a whole number in [0, SEED_LIMIT) (an API caller's "42" too)."""
    from vslerp.ui.render import check_seed

    if isinstance(seed, str) and seed.strip().isdigit():  # an API caller's "42"
        seed = int(seed)
    try:
        return check_seed(seed, "the seed")
    except (TypeError, ValueError) as err:
        raise EditorError(sentence(err)) from None


def settings(steps, guidance, size) -> tuple[int, float, int]:
    """Steps, guidance and size checked as the page's sliders bound them (API callers too)."""
    from vslerp._checks import check_magnitude

    def whole(name, value, low, high):
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
    try:
        guidance = float(guidance)
        check_magnitude("guidance", guidance)
    except (TypeError, ValueError) as err:
        raise EditorError(f"Guidance must be a number of at most 1e6, got {guidance!r} ({err}).") from None
    return steps, guidance, size


def axis(name: str, symbol: str, values, lies_in_0_1: bool) -> tuple[float, ...]:
    """θ or α values as floats, each named if it is not a number (θ: in 0..1)."""
    from vslerp._checks import check_magnitude
    from vslerp.ui.render import check_thetas

    out = []
    for value in values:
        try:
            value = float(value)
            check_magnitude(symbol, value)
        except TypeError:
            raise EditorError(f"{name} must be a number, got {value!r}.") from None
        except ValueError as err:  # "alpha 1e+308 is too large: |alpha| <= 1e+06"
            raise EditorError(sentence(err)) from None
        out.append(value)
    if lies_in_0_1:
        try:
            check_thetas(out, hint=". (`vslerp grid --allow-extrapolation` renders θ outside 0..1.)")
        except ValueError as err:
            raise EditorError(sentence(err)) from None
    return tuple(out)


def _number(name: str, value, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditorError(f"{name} must be a number, got {value!r}.") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise EditorError(f"{name} must be from {low:g} to {high:g}, got {value!r}.")
    return number


def backend_options(pipe, steps: int, strength=1.0, prompt=None, negative_prompt=None, noise_level=0,
                    ip_adapter_scale=None) -> dict:
    """The backend options of an event as :class:`~vslerp.ui.render.RenderSpec` fields.

    strength in (0, 1] (below 1: img2img from the source photo, at least one denoising step);
    empty prompts are None; noise level a whole number ≥ 0; IP-Adapter scale None or a number
    ≥ 0. An option away from its default that ``pipe``'s backend does not take
    (``pipe._backend_options``) is refused, by name.
    """
    if strength is None:
        strength = 1.0
    strength = _number("Strength", strength, 0.0, 1.0)
    if strength == 0.0:
        raise EditorError("Strength must be above 0 (1: from pure noise; lower keeps more of the photo).")
    if strength < 1 and int(steps * strength) < 1:
        raise EditorError(f"Strength {strength:g} with {steps} steps leaves no denoising step "
                          "(steps × strength must be ≥ 1): raise the steps or the strength.")
    texts = {}
    for key, name in (("prompt", "Text prompt"), ("negative_prompt", "Negative prompt")):
        value = {"prompt": prompt, "negative_prompt": negative_prompt}[key]
        if value is not None and not isinstance(value, str):
            raise EditorError(f"{name} must be text, got {type(value).__name__}.")
        texts[key] = (value.strip() or None) if value is not None else None
    level = _number("Noise level", 0 if noise_level is None else noise_level, 0, 10**6)
    if level != int(level):
        raise EditorError(f"Noise level must be a whole number, got {noise_level!r}.")
    scale = None if ip_adapter_scale in (None, "") else _number("IP-Adapter scale", ip_adapter_scale, 0.0, 1e6)
    options = {"strength": strength, **texts, "noise_level": int(level), "ip_adapter_scale": scale}
    from vslerp.pipelines.inputs import first_refused, options_given

    refused = first_refused(getattr(pipe, "_backend_options", ()), options_given(**options))
    if refused is not None:
        raise EditorError(f"{OPTION_LABELS[refused]} is not supported by this model ({pipe.backend}).")
    return options
