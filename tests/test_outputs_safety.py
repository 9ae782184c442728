"""The shared output rules (vslerp.stats.outputs): atomic writes, one run per output, an output
never replaces an input, a killed run's temporary files removed by the next owner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vslerp.stats as vs
from vslerp.stats import outputs
from vslerp.stats.outputs import (
    TEMP_MARK,
    OutputBusy,
    atomic_write,
    forget_inputs,
    note_input,
    output_lock,
    refuse_overwriting_inputs,
)


@pytest.fixture(autouse=True)
def _fresh_inputs():
    forget_inputs()
    yield
    forget_inputs()


def test_atomic_write_usual_mode_and_no_leftovers(tmp_path):
    out = tmp_path / "a.txt"
    atomic_write(out, lambda tmp: tmp.write_text("x"))
    assert out.read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError):
        atomic_write(out, lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")))
    assert out.read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_atomic_write_refuses_a_noted_input_through_symlink_and_hardlink(tmp_path):
    src = tmp_path / "src.png"
    src.write_bytes(b"source")
    note_input(src, "source image")
    for alias in (tmp_path / "link.png", tmp_path / "hard.png"):
        if alias.name == "link.png":
            alias.symlink_to(src)
        else:
            os.link(src, alias)
        with pytest.raises(ValueError, match="source image"):
            atomic_write(alias, lambda tmp: tmp.write_bytes(b"grid"))
    with pytest.raises(ValueError, match="never replaces an input"):
        atomic_write(src, lambda tmp: tmp.write_bytes(b"grid"))
    assert src.read_bytes() == b"source"
    forget_inputs()
    atomic_write(src, lambda tmp: tmp.write_bytes(b"grid"))
    assert src.read_bytes() == b"grid"


def test_refuse_overwriting_inputs_names_both_options(tmp_path):
    src = tmp_path / "src.png"
    src.write_bytes(b"s")
    link = tmp_path / "l.png"
    link.symlink_to(src)
    with pytest.raises(ValueError, match=r"--out .*l\.png is the SOURCE"):
        refuse_overwriting_inputs({"--out": link}, {"SOURCE": src, "--stats": None})
    refuse_overwriting_inputs({"--out": tmp_path / "grid.png"}, {"SOURCE": src})


def test_output_lock_second_owner_fails_at_once(tmp_path):
    out = tmp_path / "grid.png"
    with output_lock(out, folders=(tmp_path / "cells",)):
        with pytest.raises(OutputBusy, match="grid.png is being written by another vslerp run"):
            with output_lock(out):
                pass
        with pytest.raises(OutputBusy, match="cells"):
            with output_lock(folders=(tmp_path / "cells",)):
                pass
    with output_lock(out):  # released
        pass


def test_lock_of_a_killed_process_is_free(tmp_path):
    out = tmp_path / "o.bin"
    code = ("import os, sys; from vslerp.stats.outputs import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); os._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "held" in proc.stdout
    left = tmp_path / ".o.bin.lock"
    assert left.exists()  # the killed run's lock file: reclaimed, not a blocker
    with output_lock(out):
        pass
    assert not left.exists()


def test_a_run_that_ends_leaves_no_lock_file(tmp_path):
    out, cells = tmp_path / "grid.png", tmp_path / "cells"
    with output_lock(out, folders=(cells,)):
        assert (tmp_path / ".grid.png.lock").exists() and (cells / ".vslerp.lock").exists()
    assert list(tmp_path.iterdir()) == [cells] and list(cells.iterdir()) == []
    with pytest.raises(RuntimeError), output_lock(out):  # an error ends the run too
        raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == [cells]


def test_of_threads_racing_for_one_output_exactly_one_owns_it(tmp_path):
    import threading

    out, count = tmp_path / "grid.png", 6
    start, losers_done = threading.Barrier(count), threading.Event()
    owners, refused = [], []

    def race():
        start.wait()
        try:
            with output_lock(out):
                owners.append(threading.get_ident())
                losers_done.wait(timeout=30)  # held until every other thread has tried
        except OutputBusy:
            refused.append(threading.get_ident())
            if len(refused) == count - 1:
                losers_done.set()

    threads = [threading.Thread(target=race) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(owners) == 1 and len(refused) == count - 1
    assert not (tmp_path / ".grid.png.lock").exists()


def test_of_processes_racing_for_one_output_exactly_one_owns_it(tmp_path):
    out, count = tmp_path / "grid.png", 3
    code = ("import sys; from vslerp.stats.outputs import output_lock, OutputBusy\n"
            "sys.stdin.readline()\n"  # all start on the test's word
            "try:\n"
            f"    with output_lock({str(out)!r}):\n"
            "        print('owner', flush=True); sys.stdin.read()\n"  # held until the test closes stdin
            "except OutputBusy:\n    print('refused', flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(count)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    said = [proc.stdout.readline().strip() for proc in procs]
    for proc in procs:
        proc.communicate()
    assert sorted(said) == ["owner"] + ["refused"] * (count - 1)
    assert not (tmp_path / ".grid.png.lock").exists()


def test_next_owner_removes_a_killed_runs_temporaries(tmp_path):
    out = tmp_path / "grid.png"
    stale = tmp_path / f".grid.png{TEMP_MARK}deadbeef.png"
    other = tmp_path / f".other.png{TEMP_MARK}deadbeef.png"
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    with output_lock(out):
        assert not stale.exists() and other.exists()
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / f".r00_c00.png{TEMP_MARK}0badf00d.png").write_bytes(b"half")
    (cells / "r00_c01.png").write_bytes(b"done")
    with output_lock(folders=(cells,)):
        assert sorted(p.name for p in cells.iterdir() if not p.name.endswith(".lock")) == ["r00_c01.png"]


def test_import_does_not_change_umask():
    code = ("import os; os.umask(0o077); import vslerp.stats, vslerp.stats.statistics_file; "
            "print(oct(os.umask(0o022)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0o77"
    assert "umask" not in outputs.__dict__


def test_importing_every_stats_module_does_no_work():
    """No umask, logging, warning-filter or environment change, and no model, plotting or
    image library imported, by importing any module of vslerp.stats (torch is imported first:
    its own import-time changes are not ours)."""
    modules = sorted(p.stem for p in Path(vs.__file__).parent.glob("*.py") if p.stem != "__init__")
    code = f"""
import json, logging, os, sys, warnings
import torch
def state():
    umask = os.umask(0o022); os.umask(umask)
    loggers = {{n: getattr(l, "level", None) for n, l in logging.root.manager.loggerDict.items()}}
    return [umask, logging.root.level, len(logging.root.handlers), loggers, repr(warnings.filters),
            dict(os.environ)]
before = state()
import importlib
for name in {modules!r}:
    importlib.import_module("vslerp.stats." + name)
heavy = [m for m in ("transformers", "diffusers", "matplotlib", "sklearn", "PIL", "gradio")
         if m in sys.modules]
print(json.dumps({{"same": state() == before, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(modules) >= 10 and result == {"same": True, "heavy": []}, (modules, result)
