"""The docs check's workspace (tests/test_docs.py): example inputs and a fake HF cache.

:func:`build_workspace` writes the files the pages name (cat.png, dog.png, val2017/,
annotations/captions_val2017.json, img2dataset shards, ...) and a Hugging Face cache in which
each hub id of the docs check holds a tiny random model in that repo's layout, and computes
the statistics files the pages use without computing them first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

SHA = "0" * 40


def _tiny_models(models: Path) -> dict[str, Path]:
    """Every tiny model a hub id may name, by key (the values of test_docs.HUB_IDS)."""
    from vslerp.pipelines.testing import make_tiny_kandinsky, make_tiny_unclip
    from vslerp.pipelines.testing_sd import (
        make_tiny_ip_adapter,
        make_tiny_sd,
        make_tiny_sdxl,
        make_tiny_stable_unclip,
    )

    prior, decoder = make_tiny_kandinsky(models)
    built = {"prior": prior, "decoder": decoder, "unclip": make_tiny_unclip(models / "unclip"),
             "stable_unclip": make_tiny_stable_unclip(models), "sd15": make_tiny_sd(models),
             "sdxl": make_tiny_sdxl(models)}
    # h94/IP-Adapter: models/ (SD 1.5) and sdxl_models/ (SDXL) in one repo.
    make_tiny_ip_adapter(models, built["sd15"], "models", "ip-adapter_sd15.safetensors")
    built["ip_adapter"] = make_tiny_ip_adapter(models, built["sdxl"], "sdxl_models",
                                               "ip-adapter_sdxl.safetensors")
    return built


def build_workspace(base: Path, env: dict, hub_ids: dict[str, str]) -> Path:
    """The inputs folder under ``base`` (returned) and ``base``/hf/hub, as the pages expect."""
    from PIL import Image

    built = _tiny_models(base / "models")
    hub = base / "hf" / "hub"
    for repo, key in hub_ids.items():
        entry = hub / ("models--" + repo.replace("/", "--"))
        shutil.copytree(built[key], entry / "snapshots" / SHA)
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text(SHA)

    inputs = base / "inputs"
    rng = __import__("numpy").random.default_rng(0)
    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((48, 48, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(path)
    for name in ["cat.png", "cat.jpg", "dog.png", "dog.jpg"]:
        image(inputs / name)
    names = [f"{i:012d}.jpg" for i in range(6)]
    for i, _name in enumerate(names):
        image(inputs / "val2017" / _name)
        image(inputs / "generated" / f"{i:04d}.png")
    coco = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": 2 * i + k, "image_id": i, "caption": f"photo {i} caption {k}"}
                            for i in range(len(names)) for k in range(2)]}
    (inputs / "annotations").mkdir()
    (inputs / "annotations" / "captions_val2017.json").write_text(json.dumps(coco))
    (inputs / "captions_val2017.json").write_text(json.dumps(coco))
    (inputs / "my_captions.txt").write_text("a cat\na dog on a sofa\na red car\n")
    _img2dataset_folders(inputs, rng)

    # Statistics files the pages name without computing them first.
    subprocess.run([str(base / "bin" / "vslerp"), "stats", "compute", "--images", "val2017",
                    "--captions", "annotations/captions_val2017.json", "--prior",
                    "kandinsky-community/kandinsky-2-2-prior", "--out", "coco_kandinsky.safetensors",
                    "--no-progress"], cwd=inputs, env=env, check=True, capture_output=True)
    return inputs


def _img2dataset_folders(inputs: Path, rng, shards: int = 4, per_shard: int = 3) -> None:
    """``web/0000K.tar`` (KEY.jpg + KEY.txt + KEY.json) and ``pq/0000K.parquet`` (``jpg`` bytes
    + ``caption``): the layouts img2dataset writes."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (inputs / "web").mkdir()
    (inputs / "pq").mkdir()
    for k in range(shards):
        rows = []
        with tarfile.open(inputs / "web" / f"{k:05d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"{k:05d}{j:04d}"
                jpg = io.BytesIO()
                Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(jpg, "JPEG")
                caption = f"sample {j} of shard {k}"
                parts = {"jpg": jpg.getvalue(), "txt": caption.encode(),
                         "json": json.dumps({"caption": caption, "key": key}).encode()}
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append((parts["jpg"], caption))
        table = pa.table({"jpg": pa.array([r[0] for r in rows], pa.binary()),
                          "caption": [r[1] for r in rows]})
        pq.write_table(table, inputs / "pq" / f"{k:05d}.parquet")


