"""One import namespace: the four folders install as vslerp, vslerp.{pipelines,stats,ui}."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = {"vslerp": "vslerp", "vslerp.pipelines": "pipelines", "vslerp.stats": "stats",
         "vslerp.ui": "ui"}
_FILES = ("import json, vslerp, vslerp.pipelines, vslerp.stats, vslerp.ui; "
          "print(json.dumps({m: __import__(m, fromlist=['_']).__file__ for m in "
          "['vslerp', 'vslerp.pipelines', 'vslerp.stats', 'vslerp.ui']}), flush=True)")
PROBE = "import vslerp.ui.cli; " + _FILES
# ... then, in the same process, what `python -m vslerp.ui.cli ARGS` runs (runpy is how -m
# runs a module): one interpreter instead of two, each ~10 s of CPU importing torch/diffusers
PROBE_THEN_CLI = _FILES + (
    "; import runpy; runpy.run_module('vslerp.ui.cli', run_name='__main__', alter_sys=True)")


def _probe(cwd: Path, env_extra: dict[str, str] | None = None, *cli_args: str,
           ) -> tuple[dict[str, str], str]:
    """``({module: __file__}, what followed on stdout)`` of a fresh interpreter in ``cwd``
    (with ``cli_args``: that interpreter then runs ``python -m vslerp.ui.cli CLI_ARGS``)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    code = PROBE_THEN_CLI if cli_args else PROBE
    lines = subprocess.run([sys.executable, "-c", code, *cli_args], cwd=cwd, env=env, check=True,
                           capture_output=True, text=True).stdout.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith('{"vslerp": '))
    return json.loads(lines[at]), "".join(lines[at + 1:])


@pytest.fixture(scope="module")
def outside_repo(tmp_path_factory):
    """From a folder outside the repo: the rooms' files, and `python -m vslerp.ui.cli --help`."""
    return _probe(tmp_path_factory.mktemp("outside"), None, "--help")


def test_installed_package_imports_all_rooms_from_outside_repo(outside_repo):
    files, _ = outside_repo
    for module, folder in ROOMS.items():
        path = Path(files[module])
        assert path.name == "__init__.py"
        # an editable install maps each room to its own top-level folder of the repo
        if REPO in path.parents:
            assert path.parent == REPO / folder, (module, path)
        else:
            assert path.parent.name == module.split(".")[-1], (module, path)


def test_built_wheel_installs_one_namespace_and_imports(tmp_path):
    wheel_dir = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheel_dir), str(REPO)],
        capture_output=True, text=True,
    )
    if build.returncode != 0 and "setuptools" in build.stderr and "No module" in build.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("vslerp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        names = zf.namelist()
    assert tops == {"vslerp", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                    + ".dist-info"}, tops
    for module, _folder in ROOMS.items():
        assert "/".join(module.split(".")) + "/__init__.py" in names
    entry = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "vslerp = vslerp.ui.cli:main" in entry

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    assert {p.name for p in site.iterdir() if not p.name.startswith("__")} <= {
        "vslerp", *(p.name for p in site.glob("vslerp-*.dist-info")), "bin"}
    files, _ = _probe(tmp_path, {"PYTHONPATH": str(site)})
    for module in ROOMS:
        assert Path(files[module]).is_relative_to(site), (module, files[module])


def test_cli_help_lists_subcommands(outside_repo):
    _, out = outside_repo
    assert out.startswith("usage: vslerp") and "info" in out
    bad = subprocess.run([sys.executable, "-m", "vslerp.ui.cli", "no-such-command"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def _declared() -> tuple[set[str], str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    import re

    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}
    return names, project["license"]


def test_every_third_party_import_is_a_declared_dependency():
    import ast
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared, _ = _declared()
    missing = {}
    for folder in ROOMS.values():
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top in sys.stdlib_module_names or top == "vslerp" or top not in dists:
                        continue
                    names = {d.lower().replace("_", "-") for d in dists[top]}
                    if not names & declared:
                        missing.setdefault(top, set()).add(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_license_file_is_the_declared_license():
    _, license_id = _declared()
    text = (REPO / "LICENSE").read_text()
    assert license_id == "MIT" and text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text
