"""Every backend's VSlerp pipeline against diffusers' own pipeline, side by side in one run.

Each backend hands its batches of distinct cells to diffusers' pipeline for the model
(KandinskyV22Pipeline, UnCLIPImageVariationPipeline, StableUnCLIPImg2ImgPipeline,
StableDiffusion[XL]Pipeline with an IP-Adapter, FluxPipeline with the XLabs IP-Adapter); the one-cell row measures what the grid layer
adds (checks, Eq. 12, conformity, Kandinsky's MoVQ decode), the grid rows what batching and
rendering each distinct cell once save.

Prints ratios (machines are noisy; ratios are what count), on tiny random models on the CPU
(no weights here; see docs/performance.md for what a GPU run shows), for each ``--backend``:
  * one cell (θ=0) vs one call of diffusers' pipeline on the same embedding (target ≤ 1.05×);
  * a Fig.-12 grid, θ = 0, .25, .5, .75, 1 × α = −2..2 (one call, max_batch_size=25) vs 25
    separate calls of diffusers' pipeline (target ≤ 0.7×); its θ=0 and θ=1 rows are one
    embedding each (Eq. 12), so the pipeline renders 17 distinct cells;
  * the same with 25 distinct cells (θ = .1 … .9): what batching alone gives;
and, for Kandinsky 2.2 only:
  * peak RSS growth over a one-cell warm-up of a 5×5 grid at each max_batch_size (fresh
    process each, --mem-size px, 1 step);
  * movq decode of one --tile-size px image, tiled (enable_movq_tiling) vs whole: time and
    peak RSS growth (fresh process each).

    python benchmarks/bench_pipeline.py [--backend all|NAME,...] [--size 64] [--steps 4] [--repeats 3]
                                        [--batch-sizes 1,5,25] [--mem-size 128] [--tile-size 384]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _backends import NAMES, build  # noqa: E402
from _rss import peak_mib, start_peak  # noqa: E402

__all__ = ["main"]


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median seconds of two functions timed alternately, ``repeats`` times each (a shared,
    busy machine slows both sides of a pair alike; the median, unlike the best run, is not
    one lucky run)."""
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate((fn_a, fn_b)):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def load(root: str):
    """The tiny Kandinsky 2.2 that ``compare`` built under ``root``, as a VSlerpPipeline."""
    from pathlib import Path

    from vslerp.pipelines import VSlerpPipeline

    pipe = VSlerpPipeline.from_pretrained(Path(root) / "decoder", prior=Path(root) / "prior", device=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def child(root: str, batch: int, size: int, steps: int) -> None:
    """One 5×5 grid at max_batch_size=batch; prints the peak RSS growth in MiB as JSON."""
    pipe = load(root)
    src, tgt = torch.randn(32), torch.randn(32)
    pipe(src, tgt, thetas=[0.0], alphas=[0.0], num_inference_steps=1, height=size, width=size,
         output_type="np")  # warm-up: one cell
    before = start_peak()
    grid = [i / 4 for i in range(5)]
    pipe(src, tgt, thetas=grid, alphas=[a - 2 for a in range(5)], num_inference_steps=steps, height=size,
         width=size, max_batch_size=batch, output_type="np")
    after = peak_mib()
    print(json.dumps({"batch": batch, "peak_rss_growth_mib": after - before, "peak_rss_mib": after}))


def tile_child(root: str, size: int, tiled: bool) -> None:
    """Decode one size×size image with the movq alone (small RSS baseline), whole or tiled as
    ``enable_movq_tiling()`` does; prints time and peak RSS growth as JSON."""
    from pathlib import Path

    from diffusers import VQModel

    from vslerp.pipelines.tiling import tiled_decode

    movq = VQModel.from_pretrained(Path(root) / "decoder", subfolder="movq")
    scale = 2 ** (len(movq.config.block_out_channels) - 1)

    def decode(z):
        return movq.decode(z, force_not_quantize=True)["sample"]

    side = size // scale
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decode(latents[..., :8, :8])  # warm-up (allocator, kernels)
        before = start_peak()
        start = time.perf_counter()
        tiled_decode(decode, latents, scale) if tiled else decode(latents)  # 64-latent tiles, 25 % overlap
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_growth_mib": peak_mib() - before}))


def run_child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="all", help=f"all, or some of {','.join(NAMES)} (comma-separated)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,5,25")
    parser.add_argument("--mem-size", type=int, default=128)
    parser.add_argument("--tile-size", type=int, default=384, help="px of the movq tiling rows (0: skip)")
    parser.add_argument("--tile-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings only; memory rows are RSS)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.root, args.child, args.size, args.steps)
        return
    if args.tile_child is not None:
        tile_child(args.root, args.tile_size, bool(args.tile_child))
        return

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # e.g. unCLIP's deprecation notice at every construction
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components..."
    transformers_logging.disable_progress_bar()  # "Loading weights"
    names = NAMES if args.backend == "all" else tuple(args.backend.split(","))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"--backend: unknown {unknown}; choose from {', '.join(NAMES)} or all")
    print(f"tiny models, {args.device} ({torch.get_num_threads()} CPU threads), {args.size}px, {args.steps} steps")
    for name in names:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as root:
            compare(name, root, args)
            if name == "kandinsky2.2":
                memory_rows(root, args)


def compare(name: str, root: str, args) -> None:
    """The one-cell and grid rows of backend ``name`` (see the module docstring)."""
    pair = build(name, root, args.steps, args.size)
    pipe, render = pair.pipe, pair.render
    pipe.to(args.device)
    src, tgt = torch.randn(32), torch.randn(32)

    def one_cell():
        return pipe(src, tgt, thetas=[0.0], alphas=[0.0], generator=torch.Generator().manual_seed(0), **render)

    alphas = [a - 2.0 for a in range(5)]

    def timed_grid(thetas):
        """(seconds of one grid call, seconds of 25 calls of diffusers' pipeline)."""
        def vslerp_grid():
            return pipe(src, tgt, thetas=thetas, alphas=alphas, max_batch_size=25,
                        generator=torch.Generator().manual_seed(0), **render)

        cells = vslerp_grid().embeddings.reshape(25, -1)

        def diffusers_25():
            for row in cells:
                pair.reference(row)

        t_25, t_grid = paired(diffusers_25, vslerp_grid, args.repeats)
        return t_grid, t_25

    pair.reference(src), one_cell()  # warm-up
    t_ref, t_one = paired(lambda: pair.reference(src), one_cell, 10 * args.repeats)  # short calls: more runs
    t_grid, t_25 = timed_grid([i / 4 for i in range(5)])
    t_distinct, t_25d = timed_grid([0.1 + 0.2 * i for i in range(5)])
    print(f"[{name}] one cell vs diffusers' pipeline: {t_one * 1e3:8.1f} ms vs {t_ref * 1e3:8.1f} ms  "
          f"ratio {t_one / t_ref:.3f} (target <= 1.05)")
    print(f"[{name}] 5x5 Fig.-12 grid vs 25 calls:    {t_grid * 1e3:8.1f} ms vs {t_25 * 1e3:8.1f} ms  "
          f"ratio {t_grid / t_25:.3f} (target <= 0.7; 17 distinct cells rendered)")
    print(f"[{name}] 5x5 distinct cells vs 25 calls:  {t_distinct * 1e3:8.1f} ms vs {t_25d * 1e3:8.1f} ms  "
          f"ratio {t_distinct / t_25d:.3f} (batching alone, 25 cells rendered)")


def memory_rows(root: str, args) -> None:
    """Kandinsky 2.2's peak-RSS rows per max_batch_size, and the tiled movq decode."""
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        info = run_child("--child", str(batch), "--root", root, "--size", str(args.mem_size), "--steps", "1")
        print(f"5x5 grid {args.mem_size}px, max_batch_size={batch:3d}: peak RSS {info['peak_rss_mib']:8.1f} MiB "
              f"(+{info['peak_rss_growth_mib']:.1f} MiB during the grid)")
    if args.tile_size:
        whole, tiled = (run_child("--tile-child", str(k), "--root", root, "--tile-size", str(args.tile_size))
                        for k in (0, 1))
        print(f"movq decode {args.tile_size}px, tiled vs whole: peak RSS +{tiled['peak_rss_growth_mib']:.0f} MiB vs "
              f"+{whole['peak_rss_growth_mib']:.0f} MiB, time {tiled['seconds']:.2f} s vs {whole['seconds']:.2f} s "
              f"(ratio {tiled['seconds'] / whole['seconds']:.2f}; the whole image's attention is quadratic in its pixels)")


if __name__ == "__main__":
    main()
