"""Benchmark of reading a COCO captions file: peak memory of ``json.load`` against the streamed
reader of ``vslerp stats compute`` (``vslerp.stats.read_coco``), whole and with ``--limit``.

A synthetic COCO-style captions file (``images`` then ``annotations``, 5 captions per image,
as ``captions_train2017.json``; ``--megabytes`` of it, default 200 as in issue 27) is written
once to a temporary folder; each reading then runs in a fresh subprocess, whose own peak
resident memory (``VmHWM``, reset when the reading starts: ``_rss.py``) is reported over its
start, side by side:

- ``json.load``: the whole document as Python objects (what ``stats compute`` did before);
- streamed, everything: ``read_coco(path)`` (every image entry and caption kept);
- streamed, ``--limit 5`` paired with images: ``read_coco(path, limit=5)`` (all annotations
  read, only those of the first 5 images kept);
- streamed, ``--limit 5`` captions only: ``read_captions(path, limit=5)`` (reading stops
  after the fifth caption).

    python benchmarks/bench_captions.py [--megabytes 200] [--limit 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rss import peak_mib, start_peak

MODES = {
    "json.load (whole document)": "load",
    "read_coco (streamed, all kept)": "all",
    "read_coco(limit=N) (paired, --images)": "paired",
    "read_captions(limit=N) (captions only)": "captions",
}


def write_captions(path: Path, megabytes: float) -> tuple[int, int]:
    """A COCO-style captions json of about ``megabytes`` MB: (images, captions)."""
    per_image = 5
    caption = "A man riding a wave on top of a surfboard near the shore on a sunny day"
    image_bytes = len(json.dumps({"license": 3, "file_name": "000000391895.jpg",
                                  "coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg",
                                  "height": 360, "width": 640, "date_captured": "2013-11-14 11:18:45",
                                  "id": 391895}))
    ann_bytes = len(json.dumps({"image_id": 391895, "id": 770337, "caption": caption}))
    n_images = int(megabytes * 1e6 / (image_bytes + per_image * ann_bytes + 6 * 2))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"info": {"description": "synthetic COCO-style captions"}, "licenses": [], "images": [')
        for i in range(n_images):
            fh.write(("," if i else "") + json.dumps({
                "license": 3, "file_name": f"{i:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                "height": 360, "width": 640, "date_captured": "2013-11-14 11:18:45", "id": i}))
        fh.write('], "annotations": [')
        for i in range(n_images * per_image):
            fh.write(("," if i else "") + json.dumps({"image_id": i // per_image, "id": i,
                                                      "caption": f"{caption} {i}"}))
        fh.write("]}")
    return n_images, n_images * per_image


def _read(mode: str, path: Path, limit: int) -> None:
    """One reading, in this (fresh) process: prints its JSON result line."""
    import vslerp.stats as vs

    base = start_peak()
    start = time.perf_counter()
    if mode == "load":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        kept = (len(data["images"]), len(data["annotations"]))
    elif mode == "all":
        images, captions = vs.read_coco(path)
        kept = (len(images), len(captions))
    elif mode == "paired":
        images, captions = vs.read_coco(path, limit=limit)
        kept = (len(images), len(captions))
    else:
        kept = (0, len(vs.read_captions(path, limit=limit)))
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "peak_over_start_mib": peak_mib() - base, "seconds": seconds,
                      "images": kept[0], "captions": kept[1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=200.0, help="size of the captions file")
    parser.add_argument("--limit", type=int, default=5, help="--limit N of the limited readings")
    parser.add_argument("--_read", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_path", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._read:
        _read(args._read, args._path, args.limit)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.json"
        n_images, n_captions = write_captions(path, args.megabytes)
        size = path.stat().st_size / 2**20
        print(f"captions file: {size:.0f} MiB, {n_images} images, {n_captions} captions; "
              f"--limit {args.limit}")
        results = {}
        for label, mode in MODES.items():
            out = subprocess.run([sys.executable, __file__, "--_read", mode, "--_path", str(path),
                                  "--limit", str(args.limit)], capture_output=True, text=True, check=True)
            r = results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {label:42s} peak RSS over start {r['peak_over_start_mib']:8.1f} MiB  "
                  f"{r['seconds']:6.1f} s  kept {r['images']} images, {r['captions']} captions")
        whole = results["load"]["peak_over_start_mib"]
        print("ratio to json.load's peak: " + ", ".join(
            f"{mode} {results[mode]['peak_over_start_mib'] / whole:.3f}" for mode in MODES.values()
            if mode != "load"))


if __name__ == "__main__":
    main()
