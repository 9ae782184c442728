"""N-way vertical mixing (`vslerp.vmix`) against one pass over the same data.

N = 8 raw embeddings on a CLIP-like shell (a thin ellipsoidal shell about a mean far from
the origin: ‖m‖ / shell radius = 0.94, the paper's image offset; relative shell width 0.2 %),
K = 1,000 weight rows (Dirichlet(1)), D = 1280, float32. For each α it prints the Newton
steps (the slowest row) and the final residual ‖Σ wᵢ log_q(ûᵢ)‖ (targets: ≤ 12 steps to
1e-12), and the time of `vmix` against one pass `weights @ vectors` (the linear mix of the
same data), timed alternately in one run: the best of the runs (as bench_conformity.py; the
target, ≤ 30×) and the medians (on a busy machine these swing far more):

    python benchmarks/bench_vmix.py [--n 8] [--rows 1000] [--dim 1280] [--alphas 0,1,2] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vslerp


def clip_like_shell(n: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors (n, dim), mean (dim,)) float32: a thin ellipsoidal shell about a far mean."""
    mean = torch.randn(dim, generator=gen)
    mean = 10.0 * mean / mean.norm()  # ‖m‖ = 10 (CLIP ViT-bigG image embeddings: ~10–20)
    radius = float(mean.norm()) / 0.94  # the paper's offset ‖m‖ / rms radius ≈ 0.94
    axes = torch.exp(0.5 * torch.randn(dim, generator=gen))  # an ellipsoid, not a sphere
    direction = torch.randn(n, dim, generator=gen) * axes
    direction = direction / direction.norm(dim=1, keepdim=True)
    width = 1 + 0.002 * torch.randn(n, 1, generator=gen)  # the paper's 0.18 % relative error
    return mean + radius * width * direction, mean


def dirichlet_rows(rows: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, n) float32 weights, uniform on the simplex."""
    e = -torch.log(torch.rand(rows, n, generator=gen).clamp_min(1e-12))
    return e / e.sum(dim=1, keepdim=True)


def alternate(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, the functions called in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--alphas", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    vectors, mean = clip_like_shell(args.n, args.dim, gen)  # (N, D), (D,)
    weights = dirichlet_rows(args.rows, args.n, gen)  # (K, N)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; N={args.n} "
          f"K={args.rows} D={args.dim} float32, shell offset {float(mean.norm()):.1f}")
    failed = False
    for alpha in (float(a) for a in args.alphas.split(",")):
        mix = vslerp.vmix_coefficients(vectors, weights, alpha, mean)
        out = vslerp.vmix(vectors, weights, alpha, mean)
        assert out.shape == (args.rows, args.dim) and bool(torch.isfinite(out).all())
        for _ in range(3):  # warm up both
            vslerp.vmix(vectors, weights, alpha, mean)
            weights @ vectors
        t = alternate({"vmix": lambda a=alpha: vslerp.vmix(vectors, weights, a, mean),
                       "pass": lambda: weights @ vectors}, args.repeats)
        best = {name: min(ts) for name, ts in t.items()}
        median = {name: statistics.median(ts) for name, ts in t.items()}
        ratio = best["vmix"] / best["pass"]
        ok = mix.iterations <= 12 and mix.residual <= 1e-12 and ratio <= 30
        failed |= not ok
        print(f"alpha={alpha:g}: {mix.iterations} Newton steps, residual {mix.residual:.1e}; "
              f"best: vmix {best['vmix'] * 1e3:6.2f} ms, one pass weights @ vectors "
              f"{best['pass'] * 1e3:5.2f} ms, ratio {ratio:5.1f}x; medians {median['vmix'] * 1e3:6.2f} / "
              f"{median['pass'] * 1e3:5.2f} ms = {median['vmix'] / median['pass']:5.1f}x  "
              f"(targets <= 12 steps, <= 1e-12, <= 30x: {'PASS' if ok else 'FAIL'})")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
