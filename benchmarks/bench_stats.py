"""Benchmark of `vslerp stats compute`: items/s against the bare encoder, and memory vs N.

1. Throughput (the headline). items/s of the real ``stats compute`` path —
   ``vslerp.stats.compute.compute_statistics``, the function the CLI calls, with its
   DataLoader workers decoding and preprocessing real JPEG files from disk, batching,
   encoding and float64 accumulation — against a bare ``image_encoder(pixel_values)``
   forward of the same encoder over the same images, pre-decoded into the same pixel
   batches. Target: ratio ≥ 0.9. The encoder is a randomly initialised CLIP ViT-B/16
   vision tower at 224 px built from a config (no download; ``--arch b32`` for ViT-B/32):
   big enough that, as with the real ViT-bigG/14, the forward dominates and the ratio
   measures the loop's overhead rather than JPEG decoding on a small CPU box. Bare and
   compute runs alternate, best and median of ``--repeats``. ``--source webdataset``: the
   same JPEGs packed in tar shards (img2dataset layout) through
   ``vslerp.stats.shard_stats.compute_shard_statistics`` (what ``--webdataset`` runs), images
   only, against the same bare forward; ``both`` (default) measures the two in turn.
2. Memory. Peak resident memory of whole streaming runs over 5,000 and 50,000 image files
   (cycling over 256 small files on disk), each in a fresh subprocess (its own VmHWM, reset
   when the run starts: ``_rss.py``), with the
   tests' tiny 32-d encoder so that 50,000 items take a minute or two: it should not grow
   with N. Webdataset: 10 and 200 tar shards of 100 small images: flat in the shards.

On a small shared CPU box wall-clock times are noisy (the load average is printed): runs
alternate and the best of each is compared.

    python benchmarks/bench_stats.py [--source folder|webdataset|both] [--arch b16] [--items 32]
        [--batch-size 16] [--workers 2] [--memory-sizes 5000,50000] [--memory-shards 10,200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from _rss import peak_mib, start_peak

ARCHS = {  # CLIPVisionConfig fields
    "tiny": dict(hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8),
    "b32": dict(hidden_size=768, projection_dim=512, intermediate_size=3072,
                num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32),
    "b16": dict(hidden_size=768, projection_dim=512, intermediate_size=3072,
                num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
}
ARCH_NAMES = {"tiny": "tiny test CLIP vision (2 layers, 32-d)", "b32": "CLIP ViT-B/32 vision",
              "b16": "CLIP ViT-B/16 vision"}


def build_encoders(arch: str, device: str, dtype: torch.dtype):
    """A randomly initialised CLIP vision tower + processor, as ``ClipEncoders``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    from vslerp.stats import ClipEncoders

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = ARCHS[arch]
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(num_channels=3, **cfg)).eval()
    side = cfg["image_size"]
    processor = CLIPImageProcessor(crop_size=side, size=side, do_center_crop=True,
                                   do_normalize=True, do_resize=True, resample=3)
    return ClipEncoders(model, processor, device=device, dtype=dtype, model_id=f"random-{arch}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_images(folder: Path, count: int, width: int = 640, height: int = 480) -> list[Path]:
    """JPEGs with photo-like content (smooth shapes plus mild noise, quality 90), so that
    they decode at about the cost of real photos, not of incompressible noise."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.random((height // 32, width // 32, 3)) * 255  # low-frequency content
        img = Image.fromarray(coarse.astype(np.uint8)).resize((width + i % 7, height), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (height, width + i % 7, 3))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def write_tars(folder: Path, files: list[Path], per_shard: int) -> list[Path]:
    """The image files packed as webdataset tar shards (img2dataset layout: KEY.jpg + KEY.txt)."""
    from webdataset.writer import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(files), per_shard):
        path = folder / f"{s // per_shard:05d}.tar"
        with TarWriter(str(path)) as sink:
            for i, file in enumerate(files[s : s + per_shard], s):
                sink.write({"__key__": f"{i:09d}", "jpg": file.read_bytes(),
                            "txt": f"a photo number {i}"})
        shards.append(path)
    return shards


def bench_throughput(encoders, files: list[Path], batch_size: int, workers: int,
                     repeats: int, source: str = "folder", tars: list[Path] = ()) -> dict:
    """stats compute (files → sums) vs a bare forward over the same, pre-made pixel batches.
    ``source``: "folder" (image files) or "webdataset" (the same JPEGs in tar shards)."""
    from vslerp.stats import ImageItem, open_image
    from vslerp.stats.compute import compute_statistics
    from vslerp.stats.shard_readers import WebDatasetSource
    from vslerp.stats.shard_stats import compute_shard_statistics

    items = [ImageItem(p.name, p, -1) for p in files]
    shards = WebDatasetSource([str(t) for t in tars]) if source == "webdataset" else None
    pixels = torch.cat([encoders.preprocess_images([open_image(p)]) for p in files])  # (N, 3, H, W)
    batches = list(pixels.split(batch_size))
    dev = encoders.device
    n = len(files)

    def bare() -> float:
        _sync(dev)
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:  # the same host→device copy and forward the loop does
                _ = encoders.image_encoder(pixel_values=batch.to(dev, encoders.dtype)).image_embeds
        _sync(dev)
        return time.perf_counter() - start

    def compute() -> float:
        _sync(dev)
        start = time.perf_counter()
        if shards is not None:
            result = compute_shard_statistics(encoders, shards, captions=False,
                                              batch_size=batch_size, num_workers=workers,
                                              progress=False)
        else:
            result = compute_statistics(encoders, items, batch_size=batch_size,
                                        num_workers=workers, shard_size=1024, progress=False)
        _sync(dev)
        seconds = time.perf_counter() - start
        if result.statistics.image.count != n:
            raise RuntimeError(f"encoded {result.statistics.image.count} of {n} items")
        return seconds

    with torch.no_grad():  # warm-up: allocator, kernels, worker start-up code paths
        encoders.image_encoder(pixel_values=batches[0].to(dev, encoders.dtype))
    t_bare, t_compute = [], []
    for _ in range(repeats):
        t_bare.append(bare())
        t_compute.append(compute())
    med_bare, med_compute = statistics.median(t_bare), statistics.median(t_compute)
    return {"items": n, "bare_items_per_s": n / min(t_bare),
            "compute_items_per_s": n / min(t_compute), "ratio": min(t_bare) / min(t_compute),
            "median_ratio": med_bare / med_compute, "bare_s": t_bare, "compute_s": t_compute}


def run_stream(arch: str, device: str, n_items: int, batch_size: int, workers: int,
               folder: Path, shards: int = 0) -> dict:
    """compute_statistics over n_items image files (cycling over the files in ``folder``), or
    with ``shards``: compute_shard_statistics over the first ``shards`` tar shards there."""
    from vslerp.stats import ImageItem
    from vslerp.stats.compute import compute_statistics
    from vslerp.stats.shard_readers import WebDatasetSource
    from vslerp.stats.shard_stats import compute_shard_statistics

    encoders = build_encoders(arch, device, torch.float16 if device.startswith("cuda") else torch.float32)
    if shards:
        source = WebDatasetSource([str(p) for p in sorted(folder.glob("*.tar"))[:shards]])
    else:
        files = sorted(folder.glob("*.jpg"))
        items = [ImageItem(f"{i}", files[i % len(files)], -1) for i in range(n_items)]
    rss_before = start_peak()
    tracemalloc.start()
    start = time.perf_counter()
    if shards:
        result = compute_shard_statistics(encoders, source, captions=False,
                                          batch_size=batch_size, num_workers=workers,
                                          progress=False)
        n_items = result.statistics.image.count
    else:
        result = compute_statistics(encoders, items, batch_size=batch_size,
                                    num_workers=workers, progress=False)
    _sync(encoders.device)
    seconds = time.perf_counter() - start
    py_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert result.statistics.image.count == n_items
    peak = peak_mib()
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # workers (forked: as a bound)
    return {"items": n_items, "shards": shards, "items_per_s": n_items / seconds,
            "peak_rss_mib": peak, "worker_peak_rss_mib": child_kib / 1024,
            "rss_growth_mib": peak - rss_before, "python_alloc_peak_mib": py_peak}


def _print_throughput(t: dict, source: str, args) -> None:
    what = ("files -> decode" if source == "folder" else
            "tar shards (webdataset) -> decode")
    print(f"[throughput:{source}] bare image_encoder forward over pre-made pixel batches: "
          f"{t['bare_items_per_s']:8.2f} items/s  (runs: "
          f"{', '.join(f'{s:.1f}' for s in t['bare_s'])} s)")
    print(f"[throughput:{source}] stats compute ({what} -> encode -> sums): "
          f"{t['compute_items_per_s']:8.2f} items/s  (runs: "
          f"{', '.join(f'{s:.1f}' for s in t['compute_s'])} s)")
    print(f"[throughput:{source}] ratio stats compute / bare forward = {t['ratio']:.3f} best, "
          f"{t['median_ratio']:.3f} median  (target >= 0.9; {t['items']} items)")


def _memory_runs(args, folder: Path, runs: list[tuple[int, int]], label: str) -> None:
    results = []
    for n, shards in runs:
        cmd = [sys.executable, __file__, "--arch", "tiny", "--device", args.device,
               "--batch-size", str(args.memory_batch_size), "--workers", str(args.workers),
               "--_stream", str(n), "--_folder", str(folder), "--_shards", str(shards)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        where = f"{r['shards']} tar shards" if shards else "image files"
        print(f"[memory:{label}] {r['items']:6d} items in {where} (tiny encoder, {args.workers} "
              f"workers, batch {args.memory_batch_size}): {r['items_per_s']:7.1f} items/s, peak "
              f"RSS {r['peak_rss_mib']:7.1f} MiB (workers {r['worker_peak_rss_mib']:.1f}), RSS "
              f"peak over its start {r['rss_growth_mib']:+.1f} MiB, Python allocations "
              f"peak {r['python_alloc_peak_mib']:.1f} MiB")
    if len(results) >= 2:
        first, last = results[0], results[-1]
        print(f"[memory:{label}] peak RSS ratio {last['items']} / {first['items']} items = "
              f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f}  (should be ~1.0; "
              f"items ratio {last['items'] / first['items']:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="b16",
                        help="encoder of the throughput part (default: b16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--source", choices=["folder", "webdataset", "both"], default="both",
                        help="image files in a folder, the same JPEGs in webdataset tar shards, "
                        "or both, one after the other (default: both)")
    parser.add_argument("--items", type=int, default=32,
                        help="image files of the throughput part (default: 32)")
    parser.add_argument("--per-shard", type=int, default=8,
                        help="images per tar shard of the throughput part (default: 8)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers, as `stats compute --num-workers` (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="(default: 3; best and median)")
    parser.add_argument("--memory-sizes", default="5000,50000",
                        help="items of the folder memory runs, '' to skip (default: 5000,50000)")
    parser.add_argument("--memory-shards", default="10,200",
                        help="tar shards of 100 small images of the webdataset memory runs, '' "
                        "to skip (default: 10,200)")
    parser.add_argument("--memory-batch-size", type=int, default=128, help="(default: 128)")
    parser.add_argument("--_stream", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_shards", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args._stream is not None:  # child process of the memory measurement
        print(json.dumps(run_stream(args.arch, args.device, args._stream, args.batch_size,
                                    args.workers, Path(args._folder), args._shards)))
        return

    sources = ["folder", "webdataset"] if args.source == "both" else [args.source]
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        files = write_images(Path(tmp) / "photos", args.items)
        tars = write_tars(Path(tmp) / "tars", files, args.per_shard)
        kib = sum(p.stat().st_size for p in files) / len(files) / 1024
        encoders = build_encoders(args.arch, args.device, dtype)
        params = sum(p.numel() for p in encoders.image_encoder.parameters()) / 1e6
        side = ARCHS[args.arch]["image_size"]
        print(f"[throughput] encoder: randomly initialised {ARCH_NAMES[args.arch]} "
              f"({params:.1f} M params, {side} px, dim {encoders.dim}) on {encoders.device} "
              f"{str(dtype).replace('torch.', '')}; torch threads {torch.get_num_threads()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"[throughput] data: {len(files)} JPEG files 640x480 (mean {kib:.0f} KiB) on disk"
              f" (and in {len(tars)} tar shards); batch {args.batch_size}; stats compute decodes"
              f" them in {args.workers} DataLoader worker(s); {args.repeats} runs, alternating")
        for source in sources:
            t = bench_throughput(encoders, files, args.batch_size, args.workers, args.repeats,
                                 source, tars)
            _print_throughput(t, source, args)
        del encoders

        if "folder" in sources:
            sizes = [int(x) for x in args.memory_sizes.split(",") if x.strip()]
            if sizes:
                folder = Path(tmp) / "small"
                write_images(folder, 256, width=64, height=48)
                _memory_runs(args, folder, [(n, 0) for n in sizes], "folder")
        if "webdataset" in sources:
            counts = [int(x) for x in args.memory_shards.split(",") if x.strip()]
            if counts:
                small = write_images(Path(tmp) / "small_tar_src", 100, width=64, height=48)
                folder = Path(tmp) / "small_tars"
                write_tars(folder, small * max(counts), 100)
                _memory_runs(args, folder, [(0, c) for c in counts], "webdataset")


if __name__ == "__main__":
    main()
