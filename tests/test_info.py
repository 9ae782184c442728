"""`vslerp --version` and `vslerp info`: what a bug report needs, from the real console entry."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

import vslerp


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vslerp.ui.cli", *args], capture_output=True,
                          text=True, check=True)


def test_version_names_vslerp_and_python():
    out = _cli("--version").stdout.strip()
    assert out == f"vslerp {vslerp.__version__} (Python {platform.python_version()})"


def test_info_reports_every_version_and_the_device():
    text = _cli("info").stdout
    lines = dict(line.split(":", 1) for line in text.strip().splitlines())
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    assert lines["vslerp"] == vslerp.__version__
    assert lines["python"] == platform.python_version()
    for name in ("torch", "diffusers", "transformers", "accelerate", "safetensors"):
        assert lines[name] == metadata.version(name), name
    try:
        gradio = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        gradio = "not installed"
    assert lines["gradio"] == gradio
    assert lines["device"].split(":")[0].split()[0] in ("cuda", "mps", "cpu")


def test_info_json_is_the_same_report():
    text = _cli("info").stdout
    data = json.loads(_cli("info", "--json").stdout)
    assert list(data)[:2] == ["vslerp", "python"]
    for name, value in data.items():
        assert f"{name}:" in text and value in text, name
