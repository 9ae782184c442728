"""VSlerpPipeline against diffusers' KandinskyV22Pipeline, side by side in one run.

Prints ratios (machines are noisy; ratios are what count), on tiny random Kandinsky 2.2
components on the CPU (no weights here; see benchmarks/GPU.md for what a GPU run shows):
  * one cell (θ=0) vs one KandinskyV22Pipeline call on the same embedding (target ≤ 1.05×);
  * a 5×5 grid (one call, max_batch_size=25) vs 25 separate KandinskyV22Pipeline calls
    (target ≤ 0.7×);
  * peak RSS growth over a one-cell warm-up of a 5×5 grid at each max_batch_size (fresh
    process each, --mem-size px, 1 step).

    python benchmarks/bench_pipeline.py [--size 64] [--steps 4] [--repeats 3] [--batch-sizes 1,5,25]
                                        [--mem-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

__all__ = ["main"]


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two functions timed alternately (a shared, busy machine
    slows both sides of a pair alike)."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, fn in enumerate((fn_a, fn_b)):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def load(root: str, build: bool = True, device: str = "cpu"):
    from pathlib import Path

    from diffusers import KandinskyV22Pipeline
    from vslerp.pipelines import VSlerpPipeline
    from vslerp.pipelines.testing import make_tiny_kandinsky

    prior_dir, decoder_dir = make_tiny_kandinsky(root) if build else (Path(root) / "prior", Path(root) / "decoder")
    pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device=None)
    decoder = KandinskyV22Pipeline.from_pretrained(decoder_dir)
    for p in (pipe, decoder):
        p.set_progress_bar_config(disable=True)
        p.to(device)
    return pipe, decoder


def child(root: str, batch: int, size: int, steps: int) -> None:
    """One 5×5 grid at max_batch_size=batch; prints the peak RSS growth in MiB as JSON."""
    pipe, _ = load(root, build=False)
    src, tgt = torch.randn(32), torch.randn(32)
    pipe(src, tgt, thetas=[0.0], alphas=[0.0], num_inference_steps=1, height=size, width=size,
         output_type="np")  # warm-up: one cell
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grid = [i / 4 for i in range(5)]
    pipe(src, tgt, thetas=grid, alphas=[a - 2 for a in range(5)], num_inference_steps=steps, height=size,
         width=size, max_batch_size=batch, output_type="np")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"batch": batch, "peak_rss_growth_mib": (after - before) / 1024, "peak_rss_mib": after / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,5,25")
    parser.add_argument("--mem-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings only; memory rows are RSS)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.root, args.child, args.size, args.steps)
        return

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        pipe, decoder = load(root, device=args.device)
        src, tgt = torch.randn(32), torch.randn(32)
        negative = pipe.zero_image_embedding()
        render = {"num_inference_steps": args.steps, "height": args.size, "width": args.size, "output_type": "np"}

        def one_diffusers(embeds=src):
            return decoder(image_embeds=embeds[None], negative_image_embeds=negative,
                           generator=torch.Generator().manual_seed(0), **render)

        def one_cell():
            return pipe(src, tgt, thetas=[0.0], alphas=[0.0], generator=torch.Generator().manual_seed(0), **render)

        grid = [i / 4 for i in range(5)]
        alphas = [a - 2.0 for a in range(5)]

        def vslerp_grid():
            return pipe(src, tgt, thetas=grid, alphas=alphas, max_batch_size=25,
                        generator=torch.Generator().manual_seed(0), **render)

        cells = vslerp_grid().embeddings.reshape(25, -1)

        def diffusers_25():
            for row in cells:
                one_diffusers(row)

        one_diffusers(), one_cell()  # warm-up
        t_ref, t_one = paired(one_diffusers, one_cell, args.repeats)
        t_25, t_grid = paired(diffusers_25, vslerp_grid, args.repeats)
        print(f"tiny Kandinsky 2.2, {args.device} ({torch.get_num_threads()} CPU threads), {args.size}px, {args.steps} steps")
        print(f"one cell vs KandinskyV22Pipeline:   {t_one * 1e3:8.1f} ms vs {t_ref * 1e3:8.1f} ms  "
              f"ratio {t_one / t_ref:.3f} (target <= 1.05)")
        print(f"5x5 grid vs 25 KandinskyV22 calls: {t_grid * 1e3:8.1f} ms vs {t_25 * 1e3:8.1f} ms  "
              f"ratio {t_grid / t_25:.3f} (target <= 0.7)")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            res = subprocess.run([sys.executable, __file__, "--child", str(batch), "--root", root, "--size",
                                  str(args.mem_size), "--steps", "1"], capture_output=True, text=True,
                                 check=True)
            info = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"5x5 grid {args.mem_size}px, max_batch_size={batch:3d}: peak RSS {info['peak_rss_mib']:8.1f} MiB "
                  f"(+{info['peak_rss_growth_mib']:.1f} MiB over a one-cell warm-up)")


if __name__ == "__main__":
    main()
