"""Shared fixtures: tiny random models built from configs (no downloads; docs/design.md)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_kandinsky(tmp_path_factory):
    """(prior_dir, decoder_dir) of a tiny random Kandinsky 2.2, saved with save_pretrained."""
    from vslerp.pipelines.testing import make_tiny_kandinsky

    return make_tiny_kandinsky(tmp_path_factory.mktemp("tiny_kandinsky"))
