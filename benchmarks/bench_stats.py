"""Benchmark of `vslerp stats compute`: encode-loop throughput and memory vs dataset size.

1. items/s of the compute loop (``vslerp.stats.compute._run_modality``: DataLoader, batches,
   encoder forward, per-chunk float64 accumulation) against the bare
   ``image_encoder(pixel_values).image_embeds`` on the *same* pre-processed batches,
   measured side by side (alternating, best of ``--repeats``). Target: ratio ≥ 0.9.
2. End-to-end items/s of ``compute_statistics`` on image files (decode + preprocess in
   DataLoader workers), for information.
3. Peak resident memory of the whole streaming run at 5,000 and 50,000 items, each in a
   fresh subprocess (ru_maxrss): it should not grow with N.

Runs offline with a random CLIP vision encoder built from a config (``--size tiny`` is the
tests' 32-d encoder; ``small`` a 4-layer 256-d one whose forward dominates like a real one).

    python benchmarks/bench_stats.py [--size small] [--device cpu] [--batches 40]
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
import tracemalloc
from pathlib import Path

import torch

SIZES = {  # CLIPVisionConfig fields
    "tiny": dict(hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8),
    "small": dict(hidden_size=256, projection_dim=256, intermediate_size=1024,
                  num_hidden_layers=4, num_attention_heads=8, image_size=64, patch_size=8),
}


def build_encoders(size: str, device: str, dtype: torch.dtype):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    from vslerp.stats import ClipEncoders

    torch.manual_seed(0)
    cfg = SIZES[size]
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(num_channels=3, **cfg)).eval()
    side = cfg["image_size"]
    processor = CLIPImageProcessor(crop_size=side, size=side, do_center_crop=True,
                                   do_normalize=True, do_resize=True, resample=3)
    return ClipEncoders(model, processor, device=device, dtype=dtype, model_id=f"random-{size}")


class PixelDataset(torch.utils.data.Dataset):
    """Pre-processed pixels held in memory: item i → (i, pixels, None), like _ImageDataset."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i):
        return i, self.pixels[i], None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_loop(encoders, n_batches: int, batch_size: int, repeats: int) -> dict:
    from vslerp.stats.compute import _collate_images, _run_modality

    from vslerp import MomentAccumulator

    side = encoders.image_encoder.config.image_size
    pixels = torch.randn(n_batches * batch_size, 3, side, side)  # (N, 3, H, W)
    batches = list(pixels.split(batch_size))
    dev = encoders.device
    gpu_batches = None

    def bare() -> float:
        nonlocal gpu_batches
        _sync(dev)
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:  # the same host→device copy the loop does
                pixels_dev = batch.to(dev, encoders.dtype, non_blocking=True)
                _ = encoders.image_encoder(pixel_values=pixels_dev).image_embeds
        _sync(dev)
        return time.perf_counter() - start

    def loop() -> float:
        acc = MomentAccumulator(encoders.dim, device=dev if dev.type == "cuda" else "cpu")
        n = pixels.shape[0]
        _sync(dev)
        start = time.perf_counter()
        _run_modality("image", n, PixelDataset(pixels), _collate_images, encoders.encode_pixels,
                      str, lambda i: -1, acc, store=None,
                      shard_size=1024, batch_size=batch_size, num_workers=0, rank=0, world=1,
                      pin_memory=dev.type == "cuda", progress=False, on_shard=None)
        _sync(dev)
        assert acc.count == n
        return time.perf_counter() - start

    bare(), loop()  # warm-up
    t_bare, t_loop = [], []
    for _ in range(repeats):
        t_bare.append(bare())
        t_loop.append(loop())
    n = pixels.shape[0]
    return {"items": n, "bare_items_per_s": n / min(t_bare), "loop_items_per_s": n / min(t_loop),
            "ratio": min(t_bare) / min(t_loop)}


def _write_images(folder: Path, count: int, side: int = 96) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        arr = (torch.rand(side, side + i % 17, 3, generator=gen) * 255).to(torch.uint8).numpy()
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def run_stream(size: str, device: str, n_items: int, batch_size: int, workers: int,
               folder: Path) -> dict:
    """compute_statistics over n_items image files (cycling over the files in ``folder``)."""
    from vslerp.stats import ImageItem
    from vslerp.stats.compute import compute_statistics

    encoders = build_encoders(size, device, torch.float16 if device.startswith("cuda") else torch.float32)
    files = sorted(folder.glob("*.jpg"))
    items = [ImageItem(f"{i}", files[i % len(files)], -1) for i in range(n_items)]
    rss_before = _rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    result = compute_statistics(encoders, items, batch_size=batch_size, num_workers=workers,
                                progress=False)
    _sync(encoders.device)
    seconds = time.perf_counter() - start
    py_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert result.statistics.image.count == n_items
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"items": n_items, "items_per_s": n_items / seconds, "peak_rss_mib": peak_kib / 1024,
            "worker_peak_rss_mib": child_kib / 1024, "rss_growth_mib": _rss_mib() - rss_before,
            "python_alloc_peak_mib": py_peak}


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-sizes", default="5000,50000")
    parser.add_argument("--_stream", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args._stream is not None:  # child process of the memory measurement
        print(json.dumps(run_stream(args.size, args.device, args._stream, args.batch_size,
                                    args.workers, Path(args._folder))))
        return

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    encoders = build_encoders(args.size, args.device, dtype)
    print(f"encoder: random CLIP vision '{args.size}' (dim {encoders.dim}, "
          f"{encoders.image_encoder.config.image_size}px) on {encoders.device} "
          f"{str(dtype).replace('torch.', '')}, batch {args.batch_size}")
    loop = bench_loop(encoders, args.batches, args.batch_size, args.repeats)
    print(f"[loop] bare encoder forward: {loop['bare_items_per_s']:9.1f} items/s")
    print(f"[loop] stats compute loop:   {loop['loop_items_per_s']:9.1f} items/s")
    print(f"[loop] ratio loop / bare = {loop['ratio']:.3f}  (target >= 0.9)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        _write_images(folder, 256)
        results = []
        for n in [int(x) for x in args.memory_sizes.split(",") if x.strip()]:
            cmd = [sys.executable, __file__, "--size", args.size, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                   "--_stream", str(n), "--_folder", str(folder)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"[stream] {r['items']:6d} image files, {args.workers} workers: "
                  f"{r['items_per_s']:8.1f} items/s, peak RSS {r['peak_rss_mib']:7.1f} MiB "
                  f"(workers {r['worker_peak_rss_mib']:.1f}), RSS growth during the run "
                  f"{r['rss_growth_mib']:+.1f} MiB, Python allocations peak "
                  f"{r['python_alloc_peak_mib']:.1f} MiB")
        if len(results) >= 2:
            first, last = results[0], results[-1]
            print(f"[stream] peak RSS ratio {last['items']} / {first['items']} items = "
                  f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f}  (should be ~1.0; "
                  f"items ratio {last['items'] / first['items']:.0f}x)")
            print(f"[stream] end-to-end / bare forward = "
                  f"{last['items_per_s'] / loop['bare_items_per_s']:.3f} (decoding included)")


if __name__ == "__main__":
    main()
