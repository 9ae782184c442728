"""The statistics commands' parsers: ``vslerp stats compute``, ``vslerp stats report`` and
``vslerp conformity``; each runs from its own module (``stats_compute``, ``stats_report``,
``stats_conformity``), imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vslerp.defaults import DEFAULT_PRIOR, DEFAULT_UNCLIP
from vslerp.ui.options import (
    DTYPE_HELP,
    add_loader_limits,
    allow_negative_values,
    dtype_arg,
    int_at_least,
    positive_float,
    positive_int,
    value_list,
)

__all__ = ["add_model_arguments", "register"]

_MODEL_HELP = ("the generator whose CLIP encoders to use (hub id or folder): a Kandinsky 2.2 prior "
               f"({DEFAULT_PRIOR}) or decoder (its prior's encoders: --prior), an unCLIP/Karlo "
               f"image-variations repo ({DEFAULT_UNCLIP}), Stable unCLIP "
               "(stabilityai/stable-diffusion-2-1-unclip[-small]), or a Stable Diffusion / SDXL base "
               "with --ip-adapter; statistics fit every model with the same image encoder "
               "(its fingerprint)")
_PRIOR_HELP = ("a Kandinsky 2.2 prior (hub id or folder), alone (as --model) or for a --model "
               f"decoder (default with a decoder: {DEFAULT_PRIOR}); an unCLIP/Karlo repo also "
               "works here")
_IP_HELP = ("REPO_OR_DIR:[SUBFOLDER/]WEIGHT.safetensors, the IP-Adapter of a --model SD / SDXL / FLUX.1 base "
            "(e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors): its SUBFOLDER/image_encoder/ "
            "is the image encoder (default: none)")
_CLIP_HELP = ("a transformers CLIPModel (hub id or folder): alone, both of its towers; with a --model "
              "without a projected text encoder (Stable unCLIP, IP-Adapter), the text side, only if "
              "its vision tower is that model's image encoder (default: none: image statistics only "
              "for those models)")

_COMPUTE_DESCRIPTION = """`vslerp stats compute`: modality statistics of a dataset through a generator's own CLIP.

Reads an MS-COCO set (--images val2017 --captions annotations/captions_val2017.json), a
plain image folder and/or a text file of captions (one a line), encodes them with the
image and text encoders of a generator (--model: a Kandinsky 2.2 prior or decoder, an
unCLIP/Karlo repo, Stable unCLIP, an SD / SDXL base with --ip-adapter; or --prior, a Kandinsky 2.2 prior) or
of a CLIP model (--clip), and writes the per-modality moment sums (mean, mean of unit
vectors, covariance and the §4 measures follow from them) to one safetensors file. Works under `accelerate launch
--num_processes N` (rank 0 writes). --from-prior-mean writes a Kandinsky prior's own
clip_mean instead (zero data). A generator without a projected text encoder (Stable unCLIP,
IP-Adapter) takes its text side from --clip, only if that CLIP's vision tower is its image
encoder; without --clip its statistics have the image modality only.
"""

_EXAMPLES = f"""
examples:
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model {DEFAULT_PRIOR} --out coco.safetensors
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model {DEFAULT_UNCLIP} --out coco_karlo.safetensors
  vslerp stats compute --images val2017 --captions annotations/captions_val2017.json \\
      --model stabilityai/stable-diffusion-2-1-unclip \\
      --clip laion/CLIP-ViT-H-14-laion2B-s32B-b79K --out coco_sd21_unclip.safetensors
  vslerp stats compute --images val2017 --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --ip-adapter h94/IP-Adapter:models/ip-adapter_sd15.safetensors --out coco_vit_h.safetensors
  vslerp stats compute --prior {DEFAULT_PRIOR} --from-prior-mean \\
      --out prior_mean.safetensors
  vslerp stats compute --webdataset "laion/{{00000..00999}}.tar" --save-embeddings laion_emb/ \\
      --prior {DEFAULT_PRIOR} --out laion.safetensors
"""

_REPORT_DESCRIPTION = """\
Geometry report (paper §4–6) from embeddings saved by `vslerp stats compute
--save-embeddings DIR`: modality tags and a 2-feature SVM, thin shell, variance tail, ODD,
offsets, conformity exact vs estimated, CLIP loss and conformity KL vs the image-mean shift
α. Writes report.md, report.json and PNG figures; nothing is re-encoded.

example:
  vslerp stats report --embeddings coco_emb/ --out-dir coco_report/ --alphas -2:2:41
  vslerp stats report --embeddings coco_emb/ --out-dir coco_report/ \\
      --compare-mean kandinsky-community/kandinsky-2-2-prior
"""

_CONFORMITY_DESCRIPTION = f"""\
Estimated conformity (paper §7.1, Eq. 10–11) of each image of a folder or each caption of a
file against a statistics file: a CSV, an optional histogram and the KL divergence to a
reference distribution. Estimator: C = a·cos(v, μ̂) + b with μ̂ the statistics' mean of
unit vectors, a = N‖μ̂‖/(N−1), b = −1/(N−1) (exact for an item of the reference set);
cos(v, m) for mean-only statistics. Items stream through the encoder in batches.

example:
  vslerp conformity --stats coco.safetensors --images generated/ \\
      --prior {DEFAULT_PRIOR} --out scores.csv --hist hist.png \\
      --reference-embeddings coco_emb/
  vslerp conformity --stats vit_h.safetensors --images generated/ \\
      --model stabilityai/stable-diffusion-2-1-unclip --out scores.csv
"""


def _runner(module: str, name: str):
    """A parser's ``func``: the run, imported when the command runs (``vslerp --help`` imports no torch)."""
    def run(args, **kwargs) -> int:
        return getattr(importlib.import_module(f"vslerp.ui.{module}"), name)(args, **kwargs)
    return run


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR|ID", help=_MODEL_HELP + " (default: none)")
    p.add_argument("--prior", default=None, metavar="DIR|ID", help=_PRIOR_HELP)
    p.add_argument("--ip-adapter", default=None, metavar="REPO_OR_DIR:[SUBFOLDER/]WEIGHT", help=_IP_HELP)
    p.add_argument("--ip-adapter-image-encoder", default=None, metavar="REPO_OR_DIR",
                   help="the IP-Adapter's image encoder (default: its SUBFOLDER/image_encoder; FLUX.1: "
                   "openai/clip-vit-large-patch14)")
    p.add_argument("--clip", default=None, metavar="DIR|ID", help=_CLIP_HELP)


def register(subparsers) -> None:
    """Add ``vslerp stats`` (``compute``, ``report``) and ``vslerp conformity``."""
    stats = subparsers.add_parser("stats", help="compute and report modality statistics",
                                  description="Modality statistics of CLIP embeddings "
                                  "(paper §4–6): `vslerp stats compute` and `vslerp stats "
                                  "report`.")
    stats_sub = stats.add_subparsers(dest="stats_command", metavar="SUBCOMMAND",
                                     parser_class=type(stats))
    stats.set_defaults(func=lambda args: _no_subcommand(stats))

    p = stats_sub.add_parser("compute", help="encode a dataset and write its statistics file",
                             description=_COMPUTE_DESCRIPTION + _EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="image folder (for COCO: val2017/; the captions json then selects its "
                   "files) (default: none, captions only)")
    p.add_argument("--captions", type=Path, metavar="FILE",
                   help="COCO captions .json (annotations/captions_val2017.json) or a .txt, "
                   "one caption a line (default: none, images only)")
    p.add_argument("--webdataset", nargs="+", metavar="PATTERN",
                   help="webdataset tar shards, img2dataset layout (KEY.jpg/.png/.webp + KEY.txt "
                   "or KEY.json 'caption'): paths or brace patterns, e.g. "
                   "'shards/{00000..00099}.tar'; each shard is a unit of work and of resuming "
                   "(default: none)")
    p.add_argument("--parquet", nargs="+", metavar="FILE",
                   help="parquet files of image bytes (binary or a {bytes, path} struct) and "
                   "captions, one file a shard; brace patterns too (default: none)")
    p.add_argument("--image-column", default=None, metavar="NAME",
                   help="--parquet image column (default: auto: image, jpg, png, ... or the "
                   "only binary column)")
    p.add_argument("--caption-column", default=None, metavar="NAME",
                   help="--parquet caption column (default: auto: caption, text, txt, ... or "
                   "the only text column)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors",
                   help="statistics file to write (required)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="items per encoder batch (default: 32)")
    p.add_argument("--num-workers", type=int_at_least(0), default=2, metavar="N",
                   help="DataLoader worker processes decoding images; 0 = in this process "
                   "(default: 2)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, else mps, else cpu; one "
                   "device per process under accelerate launch)")
    p.add_argument("--dtype", type=dtype_arg, default=None, metavar="DTYPE",
                   help=f"encoder dtype: {DTYPE_HELP} (default: float16 on CUDA, else float32)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N images (and their captions) / N captions "
                   "(default: all)")
    p.add_argument("--dataset-name", default=None, metavar="NAME",
                   help="name stored in the metadata (default: the folder or file name)")
    p.add_argument("--save-embeddings", type=Path, default=None, metavar="DIR",
                   help="also keep the raw embeddings as safetensors shards + manifest.json "
                   "(for `stats report`); a killed run started again resumes from them "
                   "(default: off)")
    p.add_argument("--shard-size", type=positive_int, default=None, metavar="N",
                   help="items per chunk / shard; fixed for a resumable run; not with "
                   "--webdataset/--parquet, whose shards are the input's (default: 1024)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file and a --save-embeddings folder of "
                   "another run (default: refuse)")
    p.add_argument("--from-prior-mean", action="store_true",
                   help="no data: write a Kandinsky prior transformer's clip_mean/clip_std "
                   "buffers as the image statistics, with the prior's image-encoder "
                   "fingerprint (source=prior_clip_mean; unCLIP/Karlo has none) (default: off)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar with items/s)")
    add_loader_limits(p)
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports) (default: one-line errors)")
    p.set_defaults(func=_runner("stats_compute", "run_compute"), command="stats compute")

    p = stats_sub.add_parser(
        "report", help="the paper's §4–6 geometry report from saved embeddings",
        description=_REPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, type=Path, metavar="DIR",
                   help="folder written by `stats compute --save-embeddings` (required)")
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="folder for report.md, report.json and the figures (required)")
    p.add_argument("--alphas", type=value_list("--alphas"), default=None, metavar="LIST",
                   help="image-mean shifts α of Eq. 9: 'a,b,c' or 'start:stop:count', e.g. "
                   "-2:2:41 (default: -1:1:21)")
    p.add_argument("--logit-scale", type=positive_float, default=100.0, metavar="S",
                   help="1/τ of the CLIP loss; 100 is CLIP's trained value, and the Kandinsky "
                   "prior repo ships none (default: 100)")
    p.add_argument("--max-pairs", type=int_at_least(2), default=None, metavar="N",
                   help="subsample the loss batch to N image–caption pairs (default: all, one "
                   "caption per image)")
    p.add_argument("--chunk-size", type=int_at_least(1), default=1024, metavar="N",
                   help="image rows per logits chunk of the loss: memory grows with N × pairs, "
                   "never pairs² (default: 1024)")
    p.add_argument("--compare-mean", default=None, metavar="DIR|ID",
                   help="also compare the embeddings' image mean with the one a checkpoint holds "
                   "(‖Δ‖/‖m‖ and cosine): a Kandinsky 2.2 or Karlo prior (clip_mean) or a Stable "
                   "unCLIP model (image_normalizer) (default: none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing report (default: refuse)")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks (for bug reports) (default: one-line errors)")
    allow_negative_values(p)
    p.set_defaults(func=_runner("stats_report", "run_report"), command="stats report")

    p = subparsers.add_parser(
        "conformity", help="score images or captions by estimated conformity (§7.1)",
        description=_CONFORMITY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", required=True, type=Path, metavar="FILE",
                   help="statistics file from `vslerp stats compute` (required)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, metavar="DIR",
                      help="folder of images to score (this or --captions)")
    what.add_argument("--captions", type=Path, metavar="FILE",
                      help="captions to score: .txt (one a line) or COCO .json (this or --images)")
    add_model_arguments(p)  # --model / --prior / --ip-adapter / --clip, as `stats compute` takes them
    p.add_argument("--out", required=True, type=Path, metavar="scores.csv",
                   help="CSV of name,conformity to write (required)")
    p.add_argument("--hist", type=Path, default=None, metavar="hist.png",
                   help="also write a histogram PNG (default: none)")
    p.add_argument("--reference-embeddings", type=Path, default=None, metavar="DIR",
                   help="embeddings folder of the statistics' dataset: reference distribution "
                   "(exact conformity) for the histogram and the KL divergence (default: none, "
                   "no KL)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32, metavar="N",
                   help="items per encoder batch (default: 32)")
    p.add_argument("--num-workers", type=int_at_least(0), default=2, metavar="N",
                   help="DataLoader worker processes decoding images; 0 = in this process "
                   "(default: 2)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu (default: cuda, else mps, else cpu)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar with items/s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse)")
    add_loader_limits(p)
    p.set_defaults(func=_runner("stats_conformity", "run_conformity"), command="conformity")


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
