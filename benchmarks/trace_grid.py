"""Trace one 5×5 ``vslerp grid`` on the tiny Kandinsky models: how much of the house it walks.

Counts the project files whose functions are called from ``vslerp.ui.cli.main`` on (module
bodies run at import, with the class bodies and comprehensions in them, are not counted) and
the opens of any ``model_index.json`` (diffusers' own reads included, through an audit hook). The measure of issue "one request, one backend
table": a grid should run code in ≤ 16 project files and open ``model_index.json`` ≤ 3 times.

    python benchmarks/trace_grid.py [--list]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the files too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import PIL.Image

    from vslerp.pipelines.testing import make_tiny_kandinsky
    from vslerp.ui import cli

    tmp = Path(tempfile.mkdtemp(prefix="vslerp-trace-"))
    prior, decoder = make_tiny_kandinsky(tmp / "models")
    for name, colour in (("a.png", (200, 30, 30)), ("b.png", (30, 30, 200))):
        PIL.Image.new("RGB", (64, 64), colour).save(tmp / name)
    files: set[str] = set()
    opens: list[str] = []

    def importing(frame) -> bool:
        """Part of a module body run at import (a class body, a module-level comprehension)."""
        while frame is not None and frame.f_code.co_filename != __file__:
            if frame.f_code.co_name == "<module>":
                return True
            frame = frame.f_back
        return False

    def profile(frame, event, _arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(str(ROOT)) and not importing(frame):
            files.add(os.path.relpath(code.co_filename, ROOT))

    def audit(event, event_args):
        if event == "open" and str(event_args[0]).endswith("model_index.json"):
            opens.append(str(event_args[0]))

    sys.addaudithook(audit)
    argv = ["grid", str(tmp / "a.png"), str(tmp / "b.png"), "--thetas", "0:1:5", "--alphas", "-2:2:5",
            "--model", str(decoder), "--prior", str(prior), "--steps", "2", "--size", "64",
            "--out", str(tmp / "grid.png")]
    sys.setprofile(profile)
    try:
        status = cli.main(argv)
    finally:
        sys.setprofile(None)
    files.discard(os.path.relpath(__file__, ROOT))
    if args.list:
        print("\n".join(sorted(files)))
    print(f"exit status {status}; project files run: {len(files)} (target ≤ 16); "
          f"model_index.json opens: {len(opens)} (target ≤ 3)")


if __name__ == "__main__":
    main()
