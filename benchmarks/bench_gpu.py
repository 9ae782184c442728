"""The GPU suite: every backend's speed and memory at full size, against its FLOP floor, in one run.

``--device cuda``: builds full-size components with random weights directly on the GPU from
``gpu_configs/`` (copies of ``../shared/gpu/``; or ``--configs DIR``) — Kandinsky 2.2 (UNet
1.25 B, MoVQ, prior 1.03 B, ViT-bigG/14 image 1.85 B and text 0.70 B), SDXL (UNet 2.57 B, both
text towers, VAE) with an IP-Adapter, FLUX.1's transformer (11.9 B) — in bf16, wraps them in
the project's pipelines as users call them, and measures side by side: the floor (FLOPs per
denoiser call over the matmul rate measured in the same run), Kandinsky 2.2 (one cell vs
KandinskyV22Pipeline, the Fig.-12 grid per max_batch_size vs 25 calls, seconds per image vs
the floor, 768², MoVQ whole vs tiled, SDPA vs torch.compile), the prior, ``stats compute``
through ViT-bigG/14, the editor loop, SDXL + IP-Adapter and FLUX. Sections run in order of
importance while ``--budget-s`` lasts (the rest: "skipped: budget").

``--dry-run``: the same sections, rows and code paths on the tests' tiny models on the CPU, at
tiny sizes (``.ci/run`` runs it, so the suite cannot rot).

Writes ``results.json`` (one row per measurement: name, value, unit, target, floor multiple,
status, note) and ``RESULTS.md`` under ``--out``. Exit status 1 when any row failed.

    python benchmarks/bench_gpu.py --dry-run --out /tmp/gpu-dry
    python benchmarks/bench_gpu.py --device cuda --out out/gpu [--budget-s 450] [--configs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gpu_* modules beside this file

import torch  # noqa: E402

__all__ = ["FULL", "TINY", "Plan", "main", "row_names"]


@dataclass(frozen=True)
class Plan:
    dry_run: bool  # tiny models on the CPU
    dtype: str  # of every component
    matmul_n: int  # side of the matmul that measures the rate
    repeats: int  # timed runs of paired rows (median)
    k_size: int  # Kandinsky 2.2 px
    k_big: int  # the larger size, at the best batch
    k_steps: int  # steps of the one-cell row
    grid_steps: int  # steps of the grid and 768² rows (their seconds scale with it)
    batches: tuple[int, ...]  # max_batch_size of the Fig.-12 grid rows
    movq_sizes: tuple[int, ...]  # px of the MoVQ decode rows
    movq_tile: int  # latent px of a tile
    compile_steps: int
    compile_backend: str  # torch.compile backend ("eager" in the dry run: no C++ toolchain needed)
    prior_steps: int
    prior_batches: tuple[int, ...]
    stats_images: int  # JPEGs written for stats compute
    stats_batches: tuple[int, ...]
    stats_repeats: int
    workers: int  # DataLoader workers (and JPEG writers)
    editor_steps: int
    editor_size: int  # px (the editor takes 64 px and up)
    clients: int  # concurrent /edit requests
    sdxl_size: int
    sdxl_steps: int
    flux_size: int
    flux_steps: int  # reported steps per image
    flux_measure: tuple[int, int]  # step counts whose difference gives the per-step time


FULL = Plan(dry_run=False, dtype="bfloat16", matmul_n=8192, repeats=3, k_size=512, k_big=768, k_steps=50,
            grid_steps=20, batches=(1, 4, 8, 17), movq_sizes=(512, 1024), movq_tile=64, compile_steps=20,
            compile_backend="inductor", prior_steps=25, prior_batches=(1, 8), stats_images=2048,
            stats_batches=(64, 256), stats_repeats=1, workers=min(8, os.cpu_count() or 1), editor_steps=50,
            editor_size=512, clients=8, sdxl_size=1024, sdxl_steps=30, flux_size=1024, flux_steps=28, flux_measure=(2, 6))
TINY = replace(FULL, dry_run=True, dtype="float32", matmul_n=256, repeats=1, k_size=32, k_big=36, k_steps=1,
               grid_steps=1, movq_sizes=(32, 64), movq_tile=16, compile_steps=1, compile_backend="eager",
               prior_steps=2, stats_images=16, stats_batches=(4, 16), workers=2, editor_steps=1, editor_size=64, clients=3,
               sdxl_size=32, sdxl_steps=1, flux_size=32, flux_steps=4, flux_measure=(1, 2))
# (section, its rows' names, its cost on an H200 in seconds: a section starts only if that much
# of the budget is left; see benchmarks/gpu_device.md's time plan)


def sections(plan: Plan) -> list[tuple[str, list[str], float]]:
    from gpu_editor import EDITOR_NAMES, prior_names, stats_names
    from gpu_kandinsky import COMPILE_NAMES, grid_names, movq_names
    from gpu_sdxl_flux import FLUX_NAMES, SDXL_NAMES

    return [("floor", ["matmul rate", "floor", "floor 768²", "floor prior", "floor ViT-bigG/14 image",
                       "floor SDXL UNet", "floor FLUX transformer"], 20),
            ("build Kandinsky 2.2", ["build Kandinsky 2.2"], 30),
            ("one cell", ["one cell vs KandinskyV22Pipeline"], 15),
            ("grid", grid_names(plan), 50),
            ("prior", prior_names(plan), 10),
            ("stats compute", stats_names(plan), 50),
            ("editor", EDITOR_NAMES, 30),
            ("SDXL + IP-Adapter", ["build SDXL + IP-Adapter", *SDXL_NAMES], 60),
            ("FLUX", ["build FLUX + IP-Adapter", *FLUX_NAMES], 60),
            ("768²", [f"{plan.k_big}² at the best batch"], 10),
            ("MoVQ decode", movq_names(plan), 10),
            ("torch.compile", COMPILE_NAMES, 150)]


def row_names(plan: Plan) -> list[str]:
    """Every row's name, in the order results.json lists them."""
    return [name for _, names, _ in sections(plan) for name in names]


def floor_rows(suite, plan: Plan, cfgs: dict, dtype) -> None:
    from gpu_models import count_flops, matmul_rate

    suite.rate = matmul_rate(suite.device, dtype, plan.matmul_n)
    suite.add("matmul rate", suite.rate / 1e12, "TFLOP/s", None,
              note=f"{plan.matmul_n}² @ {plan.matmul_n}² {plan.dtype}, measured in this run")
    counted = [("floor", "k-unet", "kandinsky/unet", "kandinsky-unet", plan.k_size, 2, "Kandinsky 2.2 UNet, one guided step"),
               ("floor 768²", "k-unet-big", "kandinsky/unet", "kandinsky-unet", plan.k_big, 2, "Kandinsky 2.2 UNet, one guided step"),
               ("floor prior", "prior", "kandinsky/prior", "prior", 0, 2, "PriorTransformer, one guided step"),
               ("floor ViT-bigG/14 image", "vit", "kandinsky/image_encoder", "image-encoder", 0, 1, "image encoder, one image"),
               ("floor SDXL UNet", "sdxl-unet", "sdxl/unet", "sdxl-unet", plan.sdxl_size, 2, "SDXL UNet, one guided step, 77 tokens"),
               ("floor FLUX transformer", "flux", "flux/transformer", "flux", plan.flux_size, 1,
                "FLUX.1 transformer, one step (distilled guidance), 512 text tokens")]
    for name, key, cfg, kind, size, batch, what in counted:
        suite.flops[key] = count_flops(cfgs[cfg], kind, size, batch)
        at = f" at {size}²" if size else ""
        suite.add(name, suite.floor(key, 1), "s per call", None,
                  note=f"{what}{at}: {suite.flops[key] / 1e12:.4g} TFLOP (FlopCounterMode, meta device) / the matmul rate",
                  tflop=suite.flops[key] / 1e12)


def _params(*modules) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e9


def run(plan: Plan, args, root: Path):
    """All sections in order; returns the Suite."""
    import gpu_editor as ed
    import gpu_kandinsky as kd
    import gpu_sdxl_flux as sf
    from gpu_models import config_dir, load_configs, tiny_configs
    from gpu_rows import Suite

    dtype = getattr(torch, plan.dtype)
    suite = Suite(args.device, args.budget_s, plan.repeats)
    cfgs = tiny_configs(root / "tiny") if plan.dry_run else load_configs(config_dir(args.configs))
    made: dict = {}

    def need(what: str):
        if what not in made:
            raise RuntimeError(f"{what} was not built (see its build row)")
        return made[what]

    def build_k():
        seconds = suite.timed(lambda: made.update(k=kd.build_kandinsky(cfgs, suite.device, dtype, root)))
        p = made["k"].pipe
        suite.add("build Kandinsky 2.2", seconds, "s", None,
                  note=f"{_params(p.unet, p.movq, p.prior, p.image_encoder, p.text_encoder):.3f} B parameters, "
                       f"constructed on {suite.device} in {plan.dtype}, random weights")

    def sdxl():
        start = time.perf_counter()
        s = sf.build_sdxl(cfgs, suite.device, dtype, root)
        p = s.pipe
        suite.add("build SDXL + IP-Adapter", time.perf_counter() - start, "s", None,
                  note=f"{_params(p.unet, p.vae, p.text_encoder, p.text_encoder_2, p.image_encoder):.3f} B parameters "
                       "(UNet with the adapter, VAE, both text towers, ViT-bigG/14) on the device; adapter file written")
        sf.sdxl_rows(suite, plan, s)

    def flux():
        start = time.perf_counter()
        f = sf.build_flux(cfgs, suite.device, dtype, root, plan.dry_run)
        p = f.pipe
        suite.add("build FLUX + IP-Adapter", time.perf_counter() - start, "s", None,
                  note=f"{_params(p.transformer, p.vae, p.text_encoder, p.text_encoder_2, p.image_encoder):.3f} B "
                       "parameters (transformer with the adapter, small text encoders and VAE, ViT-L/14) on the "
                       "device; adapter file written")
        sf.flux_rows(suite, plan, f)

    work = {"floor": lambda: floor_rows(suite, plan, cfgs, dtype), "build Kandinsky 2.2": build_k,
            "one cell": lambda: kd.one_cell_rows(suite, plan, need("k")),
            "grid": lambda: kd.grid_rows(suite, plan, need("k")),
            "prior": lambda: ed.prior_rows(suite, plan, need("k")),
            "stats compute": lambda: ed.stats_rows(suite, plan, need("k"), root),
            "editor": lambda: ed.editor_rows(suite, plan, need("k"), root),
            "SDXL + IP-Adapter": sdxl, "FLUX": flux,
            "768²": lambda: kd.big_rows(suite, plan, need("k")),
            "MoVQ decode": lambda: kd.movq_rows(suite, plan, need("k")),
            "torch.compile": lambda: kd.compile_rows(suite, plan, need("k"))}
    for title, names, cost in sections(plan):
        suite.section(title, names, work[title], 0.0 if plan.dry_run else cost)
    return suite


def device_string(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def write_outputs(out: Path, suite, plan: Plan, args, seconds: float) -> None:
    import diffusers
    import transformers

    from vslerp.stats.outputs import atomic_write

    header = {"device": device_string(args.device), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "dry_run": plan.dry_run,
              "seconds": seconds, "budget_s": None if args.budget_s == float("inf") else args.budget_s,
              "plan": asdict(plan),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "section_seconds": suite.section_seconds}
    payload = {**header, "rows": [row.as_json() for row in suite.rows]}
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8"))

    def cell(v):
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = [f"# GPU suite results{' (dry run: tiny models, CPU)' if plan.dry_run else ''}", "",
             f"- device: {header['device']}", f"- torch {header['torch']}, diffusers {header['diffusers']}, "
             f"transformers {header['transformers']}, Python {header['python']}",
             f"- command: `{header['command']}`", f"- {header['date']}; {seconds:.0f} s in all", "",
             "| measurement | value | unit | target | × floor | status | how |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {cell(r.value)} | {r.unit} | {cell(r.target)} | {cell(r.floor_multiple)} | "
              f"{cell(r.status)} | {cell(r.note)} |" for r in suite.rows]
    atomic_write(out / "RESULTS.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, every row")
    parser.add_argument("--device", default=None, help="cuda (full size) or cpu (default: cpu with --dry-run)")
    parser.add_argument("--out", required=True, help="folder for results.json and RESULTS.md")
    parser.add_argument("--configs", default=None, help="full-size configs (default: benchmarks/gpu_configs)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds after which the remaining sections are skipped (default: 450; dry run: none)")
    parser.add_argument("--grid-steps", type=int, default=None, help="steps of the grid rows (default: 20)")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not args.device.startswith("cuda"):
        parser.error("--device: the full-size suite runs on cuda; use --dry-run for the CPU")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.grid_steps is not None and args.grid_steps < 1:
        parser.error(f"--grid-steps must be >= 1, got {args.grid_steps}")
    if args.budget_s is None:
        args.budget_s = float("inf") if args.dry_run else 450.0
    plan = TINY if args.dry_run else FULL
    if args.grid_steps:
        plan = replace(plan, grid_steps=args.grid_steps)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vslerp-gpu-") as tmp:
        suite = run(plan, args, Path(tmp))
    seconds = time.perf_counter() - start
    write_outputs(Path(args.out), suite, plan, args, seconds)
    failed = [r for r in suite.rows if r.status.startswith("error")]
    print(f"{len(suite.rows)} rows, {len(failed)} failed, {seconds:.0f} s; wrote {Path(args.out) / 'results.json'} "
          f"and RESULTS.md")
    for r in failed:
        print(f"  {r.name}: {r.status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
