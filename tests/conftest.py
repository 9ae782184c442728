"""Shared fixtures: tiny random models built from configs (no downloads; docs/design.md), the
pipelines loaded from them, and the model tripwire of the checks made before loading."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_kandinsky(tmp_path_factory):
    """(prior_dir, decoder_dir) of a tiny random Kandinsky 2.2, saved with save_pretrained."""
    from vslerp.pipelines.testing import make_tiny_kandinsky

    return make_tiny_kandinsky(tmp_path_factory.mktemp("tiny_kandinsky"))


@pytest.fixture(scope="module")
def prior(tiny_kandinsky):
    """The tiny Kandinsky prior's folder (its CLIP encoders: what `vslerp stats compute --prior` reads)."""
    return tiny_kandinsky[0]


@pytest.fixture(scope="module")
def encoders(prior):
    """The tiny prior's CLIP encoders on the CPU (``vslerp.stats.load_encoders``)."""
    import vslerp.stats as vs

    return vs.load_encoders(prior, device="cpu")


@pytest.fixture(scope="session")
def tiny_unclip(tmp_path_factory):
    """The folder of a tiny random unCLIP/Karlo image-variation pipeline (read-only: tests save elsewhere)."""
    from vslerp.pipelines.testing import make_tiny_unclip

    return make_tiny_unclip(tmp_path_factory.mktemp("tiny_unclip"))


@pytest.fixture(scope="session")
def tiny_stable_unclip(tmp_path_factory):
    """The folder of a tiny random Stable unCLIP 2.1 (read-only: tests save elsewhere)."""
    from vslerp.pipelines.testing_sd import make_tiny_stable_unclip

    return make_tiny_stable_unclip(tmp_path_factory.mktemp("tiny_stable_unclip"))


@pytest.fixture(scope="session")
def make_pipe():
    """``make_pipe(model, **kwargs)``: ``VSlerpPipeline.from_pretrained(model, **kwargs)`` with its
    progress bars off, for a module's own backend or options."""
    from vslerp.pipelines import VSlerpPipeline

    def make(model, **kwargs):
        pipe = VSlerpPipeline.from_pretrained(model, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture(scope="module")
def kandinsky_pipe(request, tiny_kandinsky, make_pipe):
    """The tiny Kandinsky 2.2 pipeline, one per test module; ``from_pretrained`` options from the
    module's ``PIPE_KWARGS`` (default ``device=None``: the device rule)."""
    prior_dir, decoder_dir = tiny_kandinsky
    return make_pipe(decoder_dir, prior=prior_dir, **{"device": None, **getattr(request.module, "PIPE_KWARGS", {})})


@pytest.fixture(scope="module")
def pipe(kandinsky_pipe):
    """The module's pipeline: the tiny Kandinsky's; a module of another backend overrides it with
    ``make_pipe``."""
    return kandinsky_pipe


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a model is loaded (the checks before loading must catch the error)."""
    from vslerp.pipelines import VSlerpPipeline

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded for an error a cheap check should catch")

    monkeypatch.setattr(VSlerpPipeline, "from_pretrained", tripwire)
