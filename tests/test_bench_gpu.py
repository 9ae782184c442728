"""The GPU suite's bookkeeping (benchmarks/bench_gpu.py): rows under a budget, failures, outputs.

The suite itself runs in ``.ci/run`` (``--dry-run``, every row on the tiny models, about a
minute); these checks are the cheap part: that a skipped or failed section still writes every
one of its rows, that results.json and RESULTS.md hold what the issue asks for, and that the
committed full-size configs are the shared ones and count the FLOPs their README states.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402
import gpu_models  # noqa: E402
from gpu_rows import Suite  # noqa: E402

ROW_KEYS = {"name", "value", "unit", "target", "floor_multiple", "status", "note", "extra"}


def test_a_section_over_budget_or_failing_still_writes_every_row():
    suite = Suite("cpu", budget_s=100.0, repeats=1)
    suite.section("fine", ["a", "b"], lambda: suite.add("a", 1.0, "s"), cost_s=1.0)

    def broken():
        suite.add("c", 2.0, "s")
        raise RuntimeError("out of memory\nmore lines")

    suite.section("broken", ["c", "d"], broken)
    suite.section("too long", ["e"], lambda: suite.add("e", 3.0, "s"), cost_s=1e6)
    status = {row.name: row.status for row in suite.rows}
    assert list(status) == ["a", "b", "c", "d", "e"]
    assert status["a"] == status["c"] == "ok"
    assert status["b"].startswith("error")  # declared, not measured
    assert status["d"] == "error: RuntimeError: out of memory"  # one line
    assert status["e"].startswith("skipped: budget")
    assert suite.rows[-1].value is None


def test_floor_multiple_is_seconds_over_the_floor():
    suite = Suite("cpu", budget_s=10.0, repeats=1)
    suite.rate, suite.flops["k"] = 1e12, 2e12  # 2 s per call
    row = suite.add("x", 0.5, "×", floor_s=suite.floor("k", 3), seconds=9.0)
    assert row.floor_multiple == pytest.approx(1.5)
    assert suite.add("y", 1.0, "s").floor_multiple is None


def test_results_json_and_markdown(tmp_path):
    suite = Suite("cpu", budget_s=10.0, repeats=1)
    suite.add("floor", 0.25, "s per call", None, note="a | b")
    suite.skip("FLUX + IP-Adapter 3×3 grid vs 9 calls", "vslerp FLUX backend not yet built", "×")

    class Args:
        device, budget_s = "cpu", float("inf")  # the dry run's default: no budget

    bench_gpu.write_outputs(tmp_path, suite, bench_gpu.TINY, Args, 1.0)
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"),
                      parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))  # Infinity / NaN
    assert data["budget_s"] is None
    assert {"device", "torch", "diffusers", "command", "rows"} <= set(data)
    assert [set(r) for r in data["rows"]] == [ROW_KEYS, ROW_KEYS]
    assert data["rows"][1]["status"] == "skipped: vslerp FLUX backend not yet built"
    text = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    assert "- device: CPU" in text and "- command: `" in text
    assert "| floor | 0.25 | s per call |" in text and "a \\| b" in text  # a note's pipe escaped
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("plan", [bench_gpu.FULL, bench_gpu.TINY], ids=["full", "tiny"])
def test_row_names_are_unique_and_issue_named(plan):
    names = bench_gpu.row_names(plan)
    assert len(names) == len(set(names))
    for name in ("floor", "one cell vs KandinskyV22Pipeline", "Fig.-12 grid", "prior", "stats compute",
                 "editor α change", "SDXL + IP-Adapter", "FLUX + IP-Adapter"):
        assert name in names


def test_committed_configs_are_the_shared_ones_and_count_the_stated_flops():
    committed = gpu_models.config_dir(None)
    assert committed == BENCH / "gpu_configs"
    shared = BENCH.parent.parent / "shared" / "gpu"
    if shared.is_dir():  # the checkout's originals (absent on a machine that gets only the repo)
        for path in shared.rglob("*.json"):
            assert (committed / path.relative_to(shared)).read_bytes() == path.read_bytes(), path
    cfgs = gpu_models.load_configs(committed)
    flops = gpu_models.count_flops(cfgs["kandinsky/unet"], "kandinsky-unet", 512, 2)
    assert flops / 1e12 == pytest.approx(1.71, rel=0.01)  # gpu_configs/README.md: 1.71 TFLOP at 512²


def test_config_dir_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="kandinsky-2-2/unet.json"):
        gpu_models.config_dir(str(tmp_path))
