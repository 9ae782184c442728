"""`vslerp batch`: many grids from a JSONL file, with the models loaded once (paper Fig. 12).

Each job is a :class:`~vslerp.ui.render.RenderSpec` (the options', with the job's inputs, axes,
seed, steps, size and guidance), rendered and written as ``vslerp grid`` does. Its sidecar
records a fingerprint of what its output depends on and the sha256 of the PNG written, so a
stopped batch resumes (same fingerprint and the PNG intact: skipped; a truncated or damaged PNG:
rendered again) and an edited job is never mistaken for a rendered one. Under
``accelerate launch --num_processes N`` the pending jobs are split between processes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

from vslerp.ui.cli import CLIError
from vslerp.ui.options import add_backend_options, add_model_options, add_render_options

__all__ = ["register", "run_batch"]

BATCH_DESCRIPTION = """\
Render many grids with the models loaded once. JOBS.jsonl holds one JSON object
a line, e.g.
  {"source": "a.png", "target": "b.png", "thetas": "0:1:3", "alphas": [-1, 0, 1],
   "seed": 0, "name": "a-b"}
TARGET may be a prompt; optional "name" (default jobNNNN, the line number),
"steps", "size", "guidance", and the backend options "strength", "prompt",
"negative_prompt", "noise_level", "ip_adapter_scale", "true_cfg_scale" (default: the options
below); relative paths are relative to JOBS.jsonl. Each job writes OUT_DIR/NAME.png + NAME.json. A job
already rendered with the same parameters is skipped, so a stopped batch
resumes; one rendered with other parameters is refused, naming its line
(--overwrite renders it again). Under `accelerate launch --num_processes N`
the pending jobs are split between the processes.

examples:
  vslerp batch jobs.jsonl --out-dir grids/
  accelerate launch --num_processes 4 $(which vslerp) batch jobs.jsonl \\
      --out-dir grids/
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("batch", help="render many grids from a JSONL file, models loaded "
                              "once", formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=BATCH_DESCRIPTION)
    p.add_argument("jobs", type=Path, metavar="JOBS.jsonl",
                   help="one job (a JSON object) a line; blank lines and # comments skipped")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                   help="folder for NAME.png + NAME.json of each job (created if missing)")
    p.add_argument("--no-labels", action="store_true",
                   help="no θ/α labels on the grids (default: labelled)")
    p.add_argument("--overwrite", action="store_true",
                   help="render again the jobs whose outputs were rendered with other "
                   "parameters (default: refused)")
    add_render_options(p)
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(func=run_batch)


# -- jobs -----------------------------------------------------------------------------------
_OPTION_KEYS = ("strength", "prompt", "negative_prompt", "noise_level", "ip_adapter_scale",
                "true_cfg_scale")  # backend options
_JOB_KEYS = ("source", "target", "thetas", "alphas", "seed", "name", "steps", "size", "guidance",
             *_OPTION_KEYS)
_RENDERED = ("thetas", "alphas", "seed", "steps", "size", "guidance")  # a job's own, in its fingerprint


def _job_number(job: dict, key: str, default, where: str):
    """A job's seed/steps/size (JSON integers, not bools) or guidance (a number), parsed (their
    ranges: :func:`vslerp.ui.checks.check_request`)."""
    value = job.get(key, default)
    shown = json.dumps(value)
    if value is None and key in ("size", "guidance"):
        return None  # the model's own
    if key == "guidance":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise CLIError(f"{where}: guidance must be a finite number, got {shown}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CLIError(f"{where}: {key} must be an integer, got {shown}")
    return value


def _job_options(job: dict, where: str) -> dict:
    """A job's backend options (JSON; absent: the options'), checked as the options are."""
    from vslerp.ui.sidecar import recorded_options

    given = {key: job[key] for key in _OPTION_KEYS if key in job}
    for key in ("strength", "noise_level"):
        if key in given and given[key] is None:
            raise CLIError(f"{where}: {key} must be a number, got null")
    checked = recorded_options({"strength": 1.0, "noise_level": 0, **given}, where)
    return {key: checked[key] for key in given}


def _read_jobs(path: Path, args, base) -> list[dict]:
    """Parse and check every job (paths, values, names) before any model is loaded; each job's
    ``spec`` is ``base`` (the options') with the job's own inputs, axes and numbers."""
    from vslerp.stats.jsonfile import parse_json
    from vslerp.ui.checks import JOB_KEYS, check_request, image_ref, values
    from vslerp.ui.render import RenderSpec

    if path.is_dir():
        raise CLIError(f"jobs file {path} is a directory, not a JSONL file")
    if not path.is_file():
        raise CLIError(f"jobs file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"jobs file {path} cannot be read ({err})") from None
    jobs, names = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            job = parse_json(line, where)
        except ValueError as err:
            raise CLIError(str(err)) from None
        if not isinstance(job, dict):
            raise CLIError(f"{where}: a job must be a JSON object")
        unknown = sorted(set(job) - set(_JOB_KEYS))
        if unknown:
            raise CLIError(f"{where}: unknown keys {unknown} (known: {sorted(_JOB_KEYS)})")
        for key in ("source", "target"):
            if not isinstance(job.get(key), str):
                raise CLIError(f"{where}: {key!r} must be a string (an image path"
                               f"{' or a prompt' if key == 'target' else ''})")
        try:
            thetas = values(job.get("thetas"), "thetas", RenderSpec.thetas)
            alphas = values(job.get("alphas"), "alphas", RenderSpec.alphas)
            source = image_ref("source", job["source"], False, base=path.parent)
            target = image_ref("target", job["target"], True, base=path.parent)
        except CLIError as err:
            raise CLIError(f"{where}: {str(err).lstrip('-')}") from None
        name = job.get("name", f"job{number:04d}")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name \
                or "\0" in name or name.startswith("."):
            raise CLIError(f"{where}: name {json.dumps(name)} must be a plain file name")
        if name in names:
            raise CLIError(f"{where}: name {name!r} already used on line {names[name]}")
        names[name] = number
        numbers = {key: _job_number(job, key, getattr(base, key), where)
                   for key in ("seed", "steps", "size", "guidance")}
        spec = replace(base, source=source, target=target, thetas=thetas, alphas=alphas, **numbers,
                       **_job_options(job, where))
        check_request(spec, args.max_size, args.max_cells, where=f"{where}: ", flags=JOB_KEYS)
        jobs.append({"line": number, "name": name, "spec": spec})
    if not jobs:
        raise CLIError(f"jobs file {path} has no jobs")
    return jobs


def _input_id(ref: dict) -> dict:
    """What identifies a job's input for its fingerprint: an image's bytes, a prompt's text."""
    if ref["kind"] == "image":
        return {"kind": "image", "sha256": ref["sha256"]}
    return {"kind": "prompt", "prompt": ref["prompt"]}


def _fingerprint(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8")).hexdigest()


def _params(spec, stats, tiny_random: bool = False) -> dict:
    """What a job's output depends on (its fingerprint's contents), as read back from a sidecar."""
    from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR
    from vslerp.ui.checks import model_ref
    from vslerp.ui.render import RenderSpec, effective_dtype

    params = {"model": model_ref(spec.model or DEFAULT_DECODER),
              "prior": model_ref(spec.prior or DEFAULT_PRIOR),
              "stats": stats.fingerprint if stats is not None else "the prior's clip_mean",
              "dtype": effective_dtype(spec), "prior_steps": spec.prior_steps, "labels": spec.labels,
              "source": _input_id(spec.source), "target": _input_id(spec.target),
              **{key: getattr(spec, key) for key in _RENDERED}}
    params["thetas"], params["alphas"] = list(spec.thetas), list(spec.alphas)
    # the backend options only where they are not the defaults: a batch rendered before they
    # existed keeps its fingerprints (and resumes)
    defaults = RenderSpec()
    for key in _OPTION_KEYS:
        if getattr(spec, key) != getattr(defaults, key):
            params[key] = getattr(spec, key)
    if spec.ip_adapter is not None:
        repo, subfolder, weight = spec.ip_adapter
        params["ip_adapter"] = [model_ref(repo), subfolder, weight]
    if spec.ip_adapter_image_encoder is not None:
        params["ip_adapter_image_encoder"] = model_ref(spec.ip_adapter_image_encoder)
    if tiny_random:  # never the default model's output
        params["model"] = params["prior"] = "tiny-random"
    return json.loads(json.dumps(params))


_DAMAGED = "damaged"  # _rendered_differently's word for an output to render again, unasked


def _damaged(png: Path, recorded: dict) -> str | None:
    """None if ``png`` is the file its job wrote (its sha256, recorded in the sidecar after the
    PNG was written; a sidecar older than that: the PNG decodes), else why not."""
    from PIL import Image

    from vslerp.ui.images import file_sha256

    expected = recorded.get("png_sha256")
    try:
        if expected is not None:
            return None if file_sha256(png) == expected else "its bytes differ from the PNG written"
        with Image.open(png) as image:
            image.verify()  # every chunk's CRC through IEND: a truncated file fails
    except Image.DecompressionBombError:
        return None  # a huge grid of an older batch: not decoded to be checked
    except Exception as err:  # whatever the decoder says of a broken file
        return f"cannot be decoded ({' '.join(str(err).split()) or type(err).__name__})"
    return None


def _rendered_differently(png: Path, job: dict) -> str | None:
    """None if ``png``'s sidecar records ``job``'s fingerprint and ``png`` is intact, else what
    differs, in words (starting with :data:`_DAMAGED` when it is this job's own output, broken
    or without its sidecar: rendered again without ``--overwrite``)."""
    from vslerp.stats.jsonfile import read_json
    from vslerp.ui.images import read_png_metadata, sidecar_path

    sidecar = sidecar_path(png)
    try:
        recorded = read_json(sidecar, "sidecar").get("job") or {}
    except FileNotFoundError:
        try:  # the PNG is written before its sidecar: a run stopped in between
            own = (read_png_metadata(png).get("job") or {}).get("fingerprint") == job["fingerprint"]
        except Exception:  # not a vslerp PNG, or a broken one
            own = False
        if own:
            return f"{_DAMAGED}: {sidecar.name} beside it was never written"
        return f"exists, but {sidecar.name} beside it is missing (its parameters are unknown)"
    except (OSError, ValueError, AttributeError):
        return f"exists, but {sidecar.name} beside it cannot be read"
    if not isinstance(recorded, dict):
        return "exists, but was not rendered by vslerp batch (no job fingerprint in its sidecar)"
    if recorded.get("fingerprint") == job["fingerprint"]:
        why = _damaged(png, recorded)
        return None if why is None else f"{_DAMAGED}: {why}"
    old = recorded.get("params")
    if not isinstance(old, dict):
        return "exists, but was not rendered by vslerp batch (no job fingerprint in its sidecar)"
    changed = sorted(k for k in set(old) | set(job["params"]) if old.get(k) != job["params"].get(k))
    return f"was rendered with other parameters ({', '.join(changed) or 'fingerprint'} changed)"


class _CellProgress:
    """``callback_on_step_end`` advancing a tqdm bar by a batch's cells after its last step."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.done = 0  # cells of this job counted so far

    def __call__(self, pipe, step, timestep, tensors):
        if step == pipe.num_timesteps - 1:
            cells = int(tensors["latents"].shape[0])
            self.done += cells
            self.bar.update(cells)
        return {}

    def finish(self, total: int) -> None:
        """Count the cells rendered for free (equal to another cell: θ=0 and θ=1 rows)."""
        if total > self.done:
            self.bar.update(total - self.done)
        self.done = total


def run_batch(args) -> int:
    from vslerp.ui.checks import check_place, own, preflight
    from vslerp.ui.render import tiny_random_args, tiny_random_models
    from vslerp.ui.runtime import accelerate_run, main_process_owns
    from vslerp.ui.sidecar import spec_from_options

    tiny_random_args(args)
    base = replace(spec_from_options(args), labels=not args.no_labels)
    jobs = _read_jobs(args.jobs, args, base)
    inputs = {"the jobs file": args.jobs, "--stats": base.stats}
    for job in jobs:
        for key in ("source", "target"):
            ref = getattr(job["spec"], key)
            if ref["kind"] == "image":
                inputs[f"{key} of line {job['line']}"] = ref["path"]
    outputs = {f"the {kind} of line {job['line']}": args.out_dir / f"{job['name']}{suffix}"
               for job in jobs for kind, suffix in (("grid", ".png"), ("sidecar", ".json"))}

    def check_outputs():
        check_place(args.out_dir, "--out-dir", folder=True)
        _regular_outputs(outputs)

    stats = preflight([job["spec"] for job in jobs], outputs, inputs, check_outputs,
                      origins=[f" ({args.jobs}:{job['line']})" for job in jobs])
    with tiny_random_models(base, args.tiny_random) as models, accelerate_run(base.device) as state, \
            main_process_owns(state, lambda: own(folders=(args.out_dir,))):  # for every process
        return _batch(args, jobs, stats, state, models)


def _regular_outputs(outputs: dict) -> None:
    """Every existing output is a regular file (a FIFO is refused, never read)."""
    from vslerp.stats.outputs import check_regular_output

    for name, path in outputs.items():
        try:
            check_regular_output(path)
        except ValueError as err:
            raise CLIError(f"{name}: {err}") from None


def _pending(args, jobs, stats) -> tuple[list, int]:
    """(jobs to render, count of those already rendered); refuses a job rendered otherwise."""
    pending, changed, skipped = [], [], 0
    for job in jobs:
        job["params"] = _params(job["spec"], stats, args.tiny_random)
        job["fingerprint"] = _fingerprint(job["params"])
        png = args.out_dir / f"{job['name']}.png"
        why = _rendered_differently(png, job) if png.exists() else "missing"
        if why is None:
            skipped += 1
        elif why == "missing" or why.startswith(_DAMAGED) or args.overwrite:
            pending.append(job)
        else:
            changed.append((job, png, why))
    if changed:
        job, png, why = changed[0]
        more = f"; {len(changed) - 1} more jobs differ" if len(changed) > 1 else ""
        raise CLIError(f"{args.jobs}:{job['line']} ({job['name']}): {png} {why}{more}: pass "
                       "--overwrite to render it again")
    return pending, skipped


def _batch(args, jobs, stats, state, models) -> int:
    pending, skipped = _pending(args, jobs, stats)
    if not pending:
        print(f"all {len(jobs)} jobs already rendered in {args.out_dir}")
        return 0
    return _render_jobs(args, stats, state, models, pending, skipped)  # models: every job's


def _render_jobs(args, stats, state, base, pending: list, skipped: int) -> int:
    from tqdm.auto import tqdm

    from vslerp.ui.images import GRID_GAP, file_sha256, grid_caption, make_grid, save_png
    from vslerp.ui.render import (
        CpuEstimate,
        load_pipeline_for_cli,
        render_for_cli,
        tiny_random_record,
    )
    from vslerp.ui.runtime import quiet_model_logs
    from vslerp.ui.sidecar import sidecar

    device = base.device or (str(state.device) if state.num_processes > 1 else None)
    show = not args.no_progress and state.is_local_main_process
    with state.split_between_processes(pending) as mine, quiet_model_logs():
        mine = list(mine)
        pipe = load_pipeline_for_cli(replace(base, device=device), stats, progress=False)
        total = sum(job["spec"].cells for job in mine)
        cells_bar = tqdm(total=total, desc="cells", unit="cell", disable=not show, position=1, leave=False,
                         dynamic_ncols=True)
        estimate = CpuEstimate(total, base.batch_size, base.size or pipe.default_size)  # once, for the run
        for job in tqdm(mine, desc=f"jobs ({skipped} done before)" if skipped else "jobs",
                        unit="job", disable=not show, position=0, dynamic_ncols=True):
            spec = job["spec"]
            progress = _CellProgress(cells_bar)
            out = render_for_cli(pipe, spec, max_size=args.max_size, max_cells=args.max_cells,
                                 callback=progress if pipe.backend != "unclip" else None, estimate=estimate)
            progress.finish(len(out.images))
            metadata = sidecar(spec, pipe, out, "batch", name=job["name"], job={
                "file": str(args.jobs.resolve()), "line": job["line"], "name": job["name"],
                "fingerprint": job["fingerprint"], "params": job["params"]}, **tiny_random_record(args))
            grid = make_grid(out.images, out.thetas, out.alphas, labels=spec.labels, gap=GRID_GAP,
                             caption=grid_caption(metadata))
            save_png(grid, args.out_dir / f"{job['name']}.png", metadata, overwrite=True,
                     sidecar=lambda png, meta=metadata: {  # what a resume checks the PNG against
                         **meta, "job": {**meta["job"], "png_sha256": file_sha256(png)}})
        cells_bar.close()
    print(f"rendered {len(mine)} jobs into {args.out_dir}"
          + (f" (skipped {skipped} already there)" if skipped else "")
          + (f" [process {state.process_index}/{state.num_processes}]"
             if state.num_processes > 1 else ""))
    return 0
