"""Exact conformity (Eq. 10 via the unit-sum identity) against one pass over the data.

Prints ratios measured side by side in one run (machines are noisy; ratios are what count):
  * exact conformity at N=200,000, D=512 float32 vs one pass `x @ w` (target ≤ 5×);
  * exact conformity vs brute force (the N×N cosine matrix) at N=20,000 (and their agreement).

    python benchmarks/bench_conformity.py [--n 200000] [--dim 512] [--brute-n 20000]
"""

from __future__ import annotations

import argparse
import time

import torch

import vslerp


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def brute_force(x: torch.Tensor) -> torch.Tensor:
    unit = x / x.norm(dim=1, keepdim=True)
    sim = unit @ unit.T  # (N, N): what the identity avoids
    return (sim.sum(1) - sim.diagonal()) / (x.shape[0] - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--brute-n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    x = torch.randn(args.n, args.dim, generator=g) + 0.5  # (N, D) float32
    w = torch.randn(args.dim, generator=g)
    t_pass = best_of(lambda: x @ w, args.repeats)
    t_conf = best_of(lambda: vslerp.conformity(x), args.repeats)
    ratio = t_conf / t_pass
    print(f"N={args.n:,} D={args.dim} float32")
    print(f"  one pass x @ w      {t_pass * 1e3:9.1f} ms")
    print(f"  exact conformity    {t_conf * 1e3:9.1f} ms   ratio {ratio:5.2f}x  "
          f"(target <= 5x: {'PASS' if ratio <= 5 else 'FAIL'})")

    xb = x[: args.brute_n]
    t_exact = best_of(lambda: vslerp.conformity(xb), args.repeats)
    t_brute = best_of(lambda: brute_force(xb), 1)
    err = float((vslerp.conformity(xb) - brute_force(xb)).abs().max())
    print(f"N={args.brute_n:,} D={args.dim} float32")
    print(f"  brute force (N x N) {t_brute * 1e3:9.1f} ms")
    print(f"  exact conformity    {t_exact * 1e3:9.1f} ms   speed-up {t_brute / t_exact:7.1f}x  "
          f"max |diff| {err:.2e}")


if __name__ == "__main__":
    main()
