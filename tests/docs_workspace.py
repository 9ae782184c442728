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
    """``{hub id: tiny model folder}`` for every hub id the pages name, in that repo's layout.

    The encoders are consistent as the real ones are (``make_tiny_encoder_repos``): Stable
    unCLIP 2.1's image encoder is h94/IP-Adapter's ``models/image_encoder`` and the vision
    tower of the ViT-H/14 CLIP, so one statistics file serves both; the SD 1.5 base is the one
    the ``models/ip-adapter_sd15`` weights were made for; ``XLabs-AI/flux-ip-adapter`` holds
    ``ip_adapter.safetensors`` (at its root) for the tiny FLUX.1-dev, whose encoder
    ``openai/clip-vit-large-patch14`` is the ViT-L/14 of the encoder repos."""
    from vslerp.pipelines.testing import make_tiny_kandinsky, make_tiny_karlo
    from vslerp.pipelines.testing_clip import make_tiny_encoder_repos
    from vslerp.pipelines.testing_flux import make_tiny_flux, make_tiny_flux_ip_adapter
    from vslerp.pipelines.testing_sd import make_tiny_sdxl

    prior, decoder = make_tiny_kandinsky(models)
    karlo, karlo_variations = make_tiny_karlo(models / "unclip")  # one text encoder, as the real two repos
    flux = make_tiny_flux(models)
    return {
        "kandinsky-community/kandinsky-2-2-prior": prior,
        "kandinsky-community/kandinsky-2-2-decoder": decoder,
        "kakaobrain/karlo-v1-alpha": karlo,  # prior/ (clip_mean) + prior_scheduler/, UnCLIPPipeline's layout
        "kakaobrain/karlo-v1-alpha-image-variations": karlo_variations,
        **make_tiny_encoder_repos(models / "encoders"),  # Stable unCLIP, h94/IP-Adapter, the CLIPs
        "stable-diffusion-v1-5/stable-diffusion-v1-5": models / "encoders" / "sd" / "sd15",
        "stabilityai/stable-diffusion-xl-base-1.0": make_tiny_sdxl(models),
        "black-forest-labs/FLUX.1-dev": flux,
        "XLabs-AI/flux-ip-adapter": make_tiny_flux_ip_adapter(models, flux)[0],  # ip_adapter.safetensors at the root
    }


def build_workspace(base: Path, env: dict) -> Path:
    """The inputs folder under ``base`` (returned) and ``base``/hf/hub, as the pages expect."""
    from PIL import Image

    hub = base / "hf" / "hub"
    for repo, folder in _tiny_models(base / "models").items():
        entry = hub / ("models--" + repo.replace("/", "--"))
        shutil.copytree(folder, entry / "snapshots" / SHA)
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

    # Statistics files the pages name without computing them first (ViT-H/14: one file serves
    # Stable unCLIP 2.1 and the SD 1.5 IP-Adapter, as their encoders' fingerprints agree).
    for name, model in (("coco_kandinsky", ["--prior", "kandinsky-community/kandinsky-2-2-prior"]),
                        ("coco_karlo", ["--model", "kakaobrain/karlo-v1-alpha-image-variations"]),
                        ("vit_h", ["--model", "stabilityai/stable-diffusion-2-1-unclip",
                                        "--clip", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"])):
        subprocess.run([str(base / "bin" / "vslerp"), "stats", "compute", "--images", "val2017",
                        "--captions", "annotations/captions_val2017.json", *model,
                        "--out", f"{name}.safetensors", "--no-progress"],
                       cwd=inputs, env=env, check=True, capture_output=True)
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


