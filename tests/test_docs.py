"""The docs check: every ```bash and ```python block of README.md and docs/*.md runs.

Each page's blocks run in order in a fresh folder holding the files the examples name
(cat.png, dog.png, val2017/, annotations/captions_val2017.json, …), with a Hugging Face cache
in which the default model ids (`kandinsky-community/kandinsky-2-2-prior`, `-decoder`,
`kakaobrain/karlo-v1-alpha-image-variations`) hold tiny random models, so every command runs
verbatim, offline. The only changes made to what a block says, for speed on a CPU:

- rendering runs 2 denoising steps at 64 px: `--steps N` / `--size N` and the JSON keys
  `"steps"` / `"size"` are set to 2 / 64 in bash blocks, `vslerp grid|animate|batch` get
  `--steps 2 --size 64` appended (the last value wins), and in Python blocks
  `VSlerpPipeline.__call__` is wrapped to use 2 steps and 64 px on Kandinsky;
- commands that cannot run here are stood in for on PATH: `pip` (CI installs the project
  itself) prints what it would install; `vslerp ui` and `accelerate launch` parse their
  command line with the real parser, then `vslerp ui` stops (tests/test_editor*.py run the
  editor) and `accelerate launch` runs its vslerp command in one process.

A block preceded by `<!-- docs-check: skip: REASON -->` is not run; the reason is required.
Run it with `python -m pytest -q -m docs tests/test_docs.py` (CI runs it in .ci/lowest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<skip><!-- docs-check: skip(?::\s*(?P<why>.*?))? -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<body>.*?)^```$", re.M | re.S)
SHA = "0" * 40
HUB_IDS = {
    "kandinsky-community/kandinsky-2-2-prior": "prior",
    "kandinsky-community/kandinsky-2-2-decoder": "decoder",
    "kakaobrain/karlo-v1-alpha-image-variations": "unclip",
}


def blocks(page: Path):
    """``(lang, body, skip_reason_or_None, line)`` for each bash/python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        why = (m.group("why") or "").strip() if m.group("skip") else None
        yield m.group("lang"), m.group("body"), why, line


def test_every_page_has_runnable_blocks_and_skips_say_why():
    assert len(PAGES) >= 7, [p.name for p in PAGES]
    for page in PAGES:
        for _lang, _body, why, line in blocks(page):
            assert why is None or why, f"{page.name}:{line}: a skipped block needs a reason"
    runnable = [b for p in PAGES for b in blocks(p) if b[2] is None]
    assert len(runnable) >= 20


_VSLERP_WRAPPER = """#!{python}
# docs check stand-in for the `vslerp` console script: 2 steps at 64 px; `ui` only parses.
import os, sys
args = sys.argv[1:]
if args[:1] == ["ui"]:
    from vslerp.ui.cli import build_parser
    build_parser().parse_args(args)
    print("docs-check: vslerp ui parsed:", " ".join(args))
    sys.exit(0)
if args[:1] in (["grid"], ["animate"], ["batch"]):
    args += ["--steps", "2", "--size", "64"]
os.execv({script!r}, [{script!r}, *args])
"""

_ACCELERATE_WRAPPER = """#!{python}
# docs check stand-in for `accelerate launch [launch options] (vslerp | -m MODULE) ARGS`.
import os, sys
args = sys.argv[1:]
assert args[0] == "launch", args
args = args[1:]
while args and args[0].startswith("--"):
    args = args[1 if args[0] in ("--multi_gpu", "--cpu") else 2:]
if args[0] == "-m":
    args = [{wrapper!r}, *args[2:]]
elif os.path.basename(args[0]) == "vslerp":
    args = [{wrapper!r}, *args[1:]]
os.execv(args[0], args)
"""

_PIP_WRAPPER = """#!/bin/sh
echo "docs-check: pip $* (not run: CI installs the project itself)"
"""

PRELUDE = """
import vslerp.pipelines.pipeline as _docs_pipeline
_docs_call = _docs_pipeline.VSlerpPipeline.__call__
def _docs_fast(self, *args, **kwargs):
    kwargs["num_inference_steps"] = 2
    if self.backend == "kandinsky2.2":
        kwargs["height"] = kwargs["width"] = 64
    return _docs_call(self, *args, **kwargs)
_docs_pipeline.VSlerpPipeline.__call__ = _docs_fast
"""


def _speed(body: str) -> str:
    body = re.sub(r"--steps \d+", "--steps 2", body)
    body = re.sub(r"--size \d+", "--size 64", body)
    body = re.sub(r'"steps": \d+', '"steps": 2', body)
    return re.sub(r'"size": \d+', '"size": 64', body)


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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of example inputs, a fake HF cache with tiny models, and stand-ins on PATH."""
    from PIL import Image

    from vslerp.pipelines.testing import make_tiny_kandinsky, make_tiny_unclip

    base = tmp_path_factory.mktemp("docs")
    models = base / "models"
    prior, decoder = make_tiny_kandinsky(models)
    built = {"prior": prior, "decoder": decoder, "unclip": make_tiny_unclip(models / "unclip")}
    hub = base / "hf" / "hub"
    for repo, key in HUB_IDS.items():
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

    bin_dir = base / "bin"
    bin_dir.mkdir()
    real = str(Path(sys.executable).with_name("vslerp"))
    wrapper = bin_dir / "vslerp"
    wrapper.write_text(_VSLERP_WRAPPER.format(python=sys.executable, script=real))
    (bin_dir / "accelerate").write_text(_ACCELERATE_WRAPPER.format(python=sys.executable,
                                                                  wrapper=str(wrapper)))
    (bin_dir / "pip").write_text(_PIP_WRAPPER)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "HF_HOME": str(base / "hf"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.pop("VSLERP_TEST_KILL_AFTER_SHARDS", None)
    # Statistics files the pages name without computing them first.
    subprocess.run([str(wrapper), "stats", "compute", "--images", "val2017", "--captions",
                    "annotations/captions_val2017.json", "--prior",
                    "kandinsky-community/kandinsky-2-2-prior", "--out", "coco_kandinsky.safetensors",
                    "--no-progress"], cwd=inputs, env=env, check=True, capture_output=True)
    return inputs, env


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_blocks_run(page, workspace, tmp_path):
    inputs, env = workspace
    cwd = tmp_path / "work"
    shutil.copytree(inputs, cwd)
    ran = 0
    for lang, body, why, line in blocks(page):
        if why is not None:
            continue
        if lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", _speed(body)]
        else:
            cmd = [sys.executable, "-c", PRELUDE + textwrap.dedent(body)]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (f"{page.name}:{line} ({lang}) failed, exit {proc.returncode}\n"
                                      f"--- block ---\n{body}\n--- stdout ---\n{proc.stdout[-2000:]}\n"
                                      f"--- stderr ---\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran or all(why for _l, _b, why, _n in blocks(page)), f"{page.name}: no block ran"
