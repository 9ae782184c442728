"""Helpers the test modules share: seeded generators, random embeddings and images, a free port."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
import PIL.Image
import torch

from vslerp.pipelines.testing import TINY_DIM


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def embedding(seed: int, dim: int = TINY_DIM) -> torch.Tensor:
    """A (dim,) raw random embedding, standard normal from ``seed``."""
    return torch.randn(dim, generator=gen(seed))


def random_image(seed: int, height: int = 40, width: int | None = None) -> PIL.Image.Image:
    """An RGB image of uniform random pixels from ``seed`` (``width`` defaults to ``height``)."""
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width or height, 3), dtype=np.uint8))


def save_random_image(path, seed: int, size: int = 40):
    """:func:`random_image` saved at ``path``; returns ``path``."""
    random_image(seed, size).save(path)
    return path


def sums_equal(a, b, exact: bool, rtol: float = 1e-6) -> None:
    """Assert two ``Statistics`` hold the same counts and moment sums (exactly, or to ``rtol``)."""
    for modality in ("image", "text"):
        acc_a, acc_b = getattr(a, modality).accumulator, getattr(b, modality).accumulator
        assert acc_a.count == acc_b.count
        for name in acc_a._SUMS:
            x, y = getattr(acc_a, name), getattr(acc_b, name)
            if exact:
                assert torch.equal(x, y), (modality, name)
            else:
                assert torch.allclose(x, y, rtol=rtol, atol=rtol * float(x.abs().max())), name


def source_and_target(root, size: int) -> None:
    """``root``/src.png and ``root``/tgt.png: random size×size RGB images (one generator, seed 0)."""
    rng = np.random.default_rng(0)
    for name in ("src.png", "tgt.png"):
        PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)


def mean_statistics(path, seed: int = 0):
    """A statistics file at ``path`` holding only a random (TINY_DIM,) raw image mean; returns its path."""
    from vslerp.stats import Statistics

    return Statistics.from_mean(embedding(seed)).save(path)


def cli(capsys, *args):
    """``main([...])`` in-process → (exit status, stdout, stderr)."""
    from vslerp.ui.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def editor_client(url: str):
    """A gradio_client for a test server, with a timeout for a loaded 2-core CI machine (httpx's
    default 5 s is shorter than an upload plus a render there)."""
    import gradio_client

    return gradio_client.Client(url, verbose=False, httpx_kwargs={"timeout": 300})


@contextlib.contextmanager
def launched_editor(pipe, **editor_kwargs):
    """(the editor's callbacks, its page launched on a free port of 127.0.0.1), closed after."""
    from vslerp.ui.editor import Editor, build_page

    editor = Editor(pipe, tiny_random=True, **editor_kwargs)
    demo = build_page(editor, concurrency=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                ssr_mode=False)
    try:
        yield editor, demo
    finally:
        demo.close()
