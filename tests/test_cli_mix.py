"""`vslerp mix` end to end on the tiny random Kandinsky: the PNG is ``pipe.mix``'s cells, its
sidecar renders it again, and every mistake is one line on stderr before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import cli, save_random_image
from PIL import Image

from vslerp.ui.images import make_grid

SIZE = 64


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_kandinsky):
    root = tmp_path_factory.mktemp("cli_mix")
    for k in range(3):
        save_random_image(root / f"in{k}.png", k, SIZE)
    prior, decoder = tiny_kandinsky
    model = ["--model", decoder, "--prior", prior, "--steps", 2, "--size", SIZE, "--seed", 3, "--no-progress"]
    return root, model


@pytest.fixture(scope="module")
def mixed(work, tiny_kandinsky):
    """A 2 × 2 mix of two images and a prompt, unlabelled (exactly its cells)."""
    from vslerp.ui.cli import main

    root, model = work
    out = root / "mix.png"
    code = main([str(a) for a in ("mix", root / "in0.png", root / "in1.png", "a red bicycle", "--weights", "1,1,1",
                                  "--weights", "2,0,2", "--alphas", "0,1", "--no-labels", "--out", out, *model)])
    assert code == 0
    return out


def test_the_png_is_pipe_mix_and_the_sidecar_says_so(work, mixed, make_pipe, tiny_kandinsky):
    root, _ = work
    prior, decoder = tiny_kandinsky
    pipe = make_pipe(decoder, prior=prior)
    ref = pipe.mix([root / "in0.png", root / "in1.png", "a red bicycle"], weights=[[1, 1, 1], [2, 0, 2]],
                   alphas=[0, 1], num_inference_steps=2, height=SIZE, width=SIZE,
                   generator=torch.Generator().manual_seed(3))
    with Image.open(mixed) as grid:
        assert np.array_equal(np.asarray(grid.convert("RGB")),
                              np.asarray(make_grid(ref.images, [0, 1], [0, 1], labels=False)))
    meta = json.loads(mixed.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["command"] == "mix" and meta["alphas"] == [0.0, 1.0]
    assert meta["weights"] == [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]]
    assert [ref["kind"] for ref in meta["inputs"]] == ["image", "image", "prompt"]
    np.testing.assert_allclose(meta["conformity"], ref.conformity.numpy(), rtol=1e-6)
    assert meta["source"] is None and meta["thetas"] is None  # not a grid: `vslerp grid --from` refuses it


def test_from_renders_the_same_pixels_and_overrides(work, mixed, capsys):
    root, _ = work
    again = root / "again.png"
    code, _, err = cli(capsys, "mix", "--from", mixed, "--out", again, "--no-progress")
    assert code == 0, err
    with Image.open(mixed) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    one = root / "one.png"
    code, _, err = cli(capsys, "mix", "--from", mixed, "--weights", "0,1,0", "--alphas", "0.5", "--out", one,
                       "--no-progress")
    assert code == 0, err
    meta = json.loads(one.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["weights"] == [[0.0, 1.0, 0.0]] and meta["alphas"] == [0.5]
    code, _, err = cli(capsys, "grid", "--from", mixed, "--out", root / "grid.png")
    assert code == 2 and "is a vslerp mix sidecar: render it again with vslerp mix --from" in err


def test_labelled_rows_name_their_weights(work, capsys):
    cells = [Image.new("RGB", (SIZE, SIZE), "gray")] * 2
    plain = make_grid(cells, [0, 1], [0.0], labels=True)
    named = make_grid(cells, [0, 1], [0.0], labels=True, row_labels=["w = 0.333, 0.333, 0.333", "w = 1, 0, 0"])
    assert named.size[1] == plain.size[1] and named.size[0] > plain.size[0]  # the margin holds the weights
    assert np.array_equal(np.asarray(named)[:, -SIZE:], np.asarray(plain)[:, -SIZE:])  # the cells as they were


@pytest.mark.parametrize(("args", "message"), [
    (["A", "B", "--weights", "1,2,3"], "--weights has 3 weights for 2 inputs: give one weight per input"),
    (["A", "B", "C", "--weights", "1,1,1", "--weights", "1,1"], "--weights row 2 has 2 weights for 3 inputs"),
    (["A", "B", "--weights", "1,-2"], "--weights must be finite and non-negative, got -2"),
    (["A", "B", "--weights", "0,0"], "--weights is all zeros: give at least one positive weight"),
    (["A", "B", "--weights", "1,x"], "--weights: 'x' is not a number"),
    (["A"], "mix takes 2 to 16 inputs IN1 IN2 … (or --from SIDECAR), got 1"),
    (["A"] * 17, "mix takes 2 to 16 inputs"),
    (["A", "missing.png"], "IN2 image not found"),
    (["A", "B", "--alphas", "0,inf"], "--alphas: values must be finite"),
    (["A", "B", "--alphas", "0:1:5", "--max-cells", "4"], "5 cells in one call is more than the limit 4"),
])
def test_mistakes_are_one_line_exit_2_before_any_model_loads(work, no_models, capsys, args, message):
    root, model = work
    named = {"A": root / "in0.png", "B": root / "in1.png", "C": root / "in2.png"}
    out = root / "refused.png"
    code, stdout, err = cli(capsys, "mix", *[named.get(a, a) for a in args], "--out", out, *model)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_mix_help_imports_no_model_library():
    import subprocess
    import sys

    code = ("import sys; from vslerp.ui.cli import build_parser; build_parser(['mix']).parse_args(['mix', 'a', 'b', "
            "'--out', 'm.png']); print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
