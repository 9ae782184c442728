"""The render commands' pre-flight: the request, the models and the outputs, checked before any
model loads, each refusal one :class:`~vslerp.ui.cli.CLIError` line.

`vslerp grid`, `animate` and `batch` call :func:`check_request` for each spec and
:func:`preflight` once; the request's own checks are :mod:`vslerp.pipelines.request`'s, named
here by the CLI's flags.
"""

from __future__ import annotations

import re

from vslerp.ui.cli import CLIError

__all__ = ["FLAGS", "JOB_KEYS", "check_request", "preflight"]

# a request's field -> the flag that sets it
FLAGS = {"thetas": "--thetas", "alphas": "--alphas", "num_inference_steps": "--steps", "guidance_scale": "--guidance",
         "height": "--size", "width": "--size", "max_batch_size": "--batch-size",
         "prior_num_inference_steps": "--prior-steps", "seed": "--seed", "strength": "--strength",
         "prompt": "--prompt", "negative_prompt": "--negative-prompt", "noise_level": "--noise-level",
         "ip_adapter_scale": "--ip-adapter-scale", "max_cells": "--max-cells", "max_size": "--max-size",
         "allow_extrapolation": "--allow-extrapolation"}
# ... and the key of a jobs file's line
JOB_KEYS = {**{field: field for field in FLAGS}, "num_inference_steps": "steps", "guidance_scale": "guidance",
            "height": "size", "width": "size"}


def check_request(spec, max_size: int | None, max_cells: int | None, where: str = "", flags: dict = FLAGS):
    """``spec`` (a :class:`~vslerp.ui.render.RenderSpec`) as a checked ``RenderRequest``, its size by
    the model's rule read from the model folder; ``where`` prefixes a refusal (a jobs file's line),
    which names the field by ``flags``."""
    from vslerp.pipelines import limits
    from vslerp.pipelines.request import RenderRequest, RequestError

    fields = {"thetas": spec.thetas, "alphas": spec.alphas, "num_inference_steps": spec.steps,
              "guidance_scale": spec.guidance, "height": spec.size, "width": spec.size,
              "max_batch_size": spec.batch_size, "prior_num_inference_steps": spec.prior_steps, "seed": spec.seed,
              "allow_extrapolation": bool(spec.allow_extrapolation), "max_size": max_size or limits.MAX_SIZE,
              "max_cells": max_cells or limits.MAX_CELLS, **spec.options}
    try:
        request = RenderRequest.from_fields(fields)
        if spec.size is not None:
            factor, fixed = limits.size_rule(spec.model)
            limits.check_size("size", spec.size, factor=factor, fixed=fixed, max_size=request.max_size,
                              lift="--max-size ")
    except RequestError as err:
        text = str(err).replace("allow_extrapolation=True", "--allow-extrapolation").replace(
            "max_cells=", "--max-cells ")
        # "strength 0.2 with num_inference_steps 2" -> "--strength 0.2 with --steps 2"
        text = re.sub(r"(?<![\w-])([a-z_]+) (?=-?[\d.])", lambda m: flags.get(m.group(1), m.group(1)) + " ", text)
        flag = flags.get(err.field, err.field)
        if err.field == "max_cells":  # "25 cells in one call is more than the limit 24 (raise it with ...)"
            said = text
        elif text.startswith((err.field, flag)):
            said = text if text.startswith(flag) else flag + text[len(err.field):]
        else:
            said = f"{flag}: {text}"
        raise CLIError(where + said) from None
    except ValueError as err:  # the size rule
        raise CLIError(f"{where}{err}" if where else f"--{err}") from None
    return request


def preflight(specs, outputs: dict, inputs: dict, check_outputs=None, *, origins=None, model_origin: str = "",
              prior_origin: str = "", stats_origin: str = ""):
    """What every render command checks once before loading: no output replaces an input, the
    command's own outputs (``check_outputs()``), the device, the model folders, each spec's
    backend options, and the ``--stats`` file, loaded (returned; None without one).
    origins: each spec's origin for its options' refusals."""
    from vslerp.ui.checks import check_device, load_stats, refuse_inputs
    from vslerp.ui.models import check_backend_options, check_model_source

    base = specs[0]
    refuse_inputs(outputs, inputs)
    if check_outputs is not None:
        check_outputs()
    check_device(base.device)
    check_model_source(base.model, "--model", model_origin)
    check_model_source(base.prior, "--prior", prior_origin)
    for spec, origin in zip(specs, origins or [model_origin] * len(specs), strict=True):
        check_backend_options(spec, origin)
    return load_stats(base.stats, stats_origin)
