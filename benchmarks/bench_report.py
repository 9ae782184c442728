"""Benchmark: the streamed CLIP loss (``vslerp.clip_loss``, the report's) vs the dense N×N version.

Each variant runs in a fresh subprocess (so peak RSS is its own): the inputs are built, the
peak RSS is noted, the loss is computed, and the growth of the peak (VmHWM) is the loss's
own memory. Prints time and peak-memory ratios measured side by side at N = 5,000, then
runs the streamed loss at 25,000 pairs, D = 1280 (COCO-size, Kandinsky's ViT-bigG dim) and
prints its peak RSS.

    /work/venv/bin/python benchmarks/bench_report.py [--n 5000] [--dim 1280] [--big 25000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _rss import peak_mib

__all__ = ["main"]


def _dense_loss(image, text, scale: float) -> float:
    """The textbook version: the full (N, N) logits, cross-entropy both ways."""
    import torch
    import torch.nn.functional as F

    logits = scale * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T  # (N, N)
    target = torch.arange(len(image))
    per = 0.5 * F.cross_entropy(logits.double(), target, reduction="none") \
        + 0.5 * F.cross_entropy(logits.T.double(), target, reduction="none")
    ok = (logits.argmax(1) == target) & (logits.argmax(0) == target)
    _ = per[ok].mean(), per[~ok].mean()
    return float(per.mean())


def _child(variant: str, n: int, dim: int, chunk: int) -> None:
    import torch

    import vslerp

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(n, dim, generator=gen) + 0.3
    text = 0.05 * image + torch.randn(n, dim, generator=gen)  # weakly matched: loss > 0
    before = peak_mib()
    start = time.perf_counter()
    if variant == "dense":
        total = _dense_loss(image, text, 100.0)
    else:
        total = float(vslerp.clip_loss(image, text, logit_scale=100.0, chunk_size=chunk).loss.mean())
    seconds = time.perf_counter() - start
    peak = peak_mib()
    print(json.dumps({"variant": variant, "n": n, "seconds": seconds, "total": total,
                      "peak_mib": peak, "loss_mib": peak - before}))


def _run(variant: str, n: int, dim: int, chunk: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(n),
                           "--dim", str(dim), "--chunk", str(chunk)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--big", type=int, default=25000)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n, args.dim, args.chunk)
        return
    dense = _run("dense", args.n, args.dim, args.chunk)
    chunked = _run("chunked", args.n, args.dim, args.chunk)
    print(f"N={args.n}, D={args.dim}: dense {dense['seconds']:.2f} s, +{dense['loss_mib']:.0f} MiB; "
          f"chunked (chunk {args.chunk}) {chunked['seconds']:.2f} s, +{chunked['loss_mib']:.0f} MiB")
    print(f"  loss agrees: {dense['total']:.6f} vs {chunked['total']:.6f}")
    print(f"  time ratio chunked/dense = {chunked['seconds'] / dense['seconds']:.2f}x, "
          f"loss-memory ratio dense/chunked = "
          f"{dense['loss_mib'] / max(chunked['loss_mib'], 1.0):.1f}x")
    big = _run("chunked", args.big, args.dim, args.chunk)
    print(f"N={args.big}, D={args.dim} chunked: {big['seconds']:.1f} s, peak RSS "
          f"{big['peak_mib']:.0f} MiB (inputs included), loss's own +{big['loss_mib']:.0f} MiB "
          f"(a dense float32 N×N alone would be {args.big ** 2 * 4 / 2 ** 20:.0f} MiB)")


if __name__ == "__main__":
    main()
