"""Issue 27, the shared output layer (vslerp.stats.outputs): a live writer's temporary file is
never removed as stale; special files are never outputs; two outputs of one run never share a
file."""

from __future__ import annotations

import errno
import gc
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import test_cli_grid
from PIL import Image
from test_cli_grid import _lines, cli

from vslerp.stats.outputs import (
    TEMP_MARK,
    atomic_write,
    check_regular_output,
    check_writable,
    output_lock,
    refuse_overwriting_inputs,
    remove_stale_temporaries,
)

work = test_cli_grid.work  # the fixtures: tiny models, a source and a target image

WRITER = textwrap.dedent("""
    import sys
    from vslerp.stats.outputs import atomic_write, output_lock

    out = sys.argv[1]
    def write(tmp):
        with open(tmp, "wb") as fh:  # a long encode: part of the file, then wait
            fh.write(b"first half ")
            fh.flush()
            print("writing", flush=True)
            sys.stdin.readline()
            fh.write(b"second half")
    with output_lock(out):
        atomic_write(out, write)
    print("done", flush=True)
""")


def test_a_live_writers_temporary_survives_another_runs_folder_cleanup(tmp_path):
    """Two processes: one owns grid.png and is writing its temporary file; another run takes
    the folder's lock (vslerp batch --out-dir does) and cleans stale temporaries."""
    out = tmp_path / "grid.png"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing", writer.stderr.read()
        live = list(tmp_path.glob(f".grid.png{TEMP_MARK}*"))
        assert len(live) == 1
        dead = tmp_path / f".old.png{TEMP_MARK}deadbeef.png"  # a killed run's: nobody holds it
        dead.write_bytes(b"half")
        with output_lock(folders=(tmp_path,)):
            pass
        assert live[0].exists() and not dead.exists()
        assert remove_stale_temporaries(out) == [] and live[0].exists()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        stdout, stderr = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0 and stdout.strip() == "done", stderr
    assert out.read_bytes() == b"first half second half"
    assert not list(tmp_path.glob(f"*{TEMP_MARK}*"))


def test_a_killed_writers_temporary_is_removed(tmp_path):
    out = tmp_path / "g.png"
    code = ("import os, sys\nfrom vslerp.stats.outputs import atomic_write\n"
            f"atomic_write({str(out)!r}, lambda tmp: (open(tmp, 'wb').write(b'half'), "
            "os._exit(0)))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    left = list(tmp_path.glob(f".g.png{TEMP_MARK}*"))
    assert len(left) == 1  # its lock died with it
    with output_lock(out):
        assert not left[0].exists()


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def test_special_files_are_refused_before_writing(tmp_path, fifo):
    for special, kind in ((fifo, "FIFO"), ("/dev/null", "character device")):
        with pytest.raises(ValueError, match=kind):
            check_regular_output(special)
        with pytest.raises(ValueError, match=kind):
            check_writable(special)
        with pytest.raises(ValueError, match=kind):
            atomic_write(special, lambda tmp: tmp.write_bytes(b"x"))
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.png"]  # no temporary left


def test_a_symlink_to_a_regular_file_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"keep")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    check_regular_output(link)
    check_writable(link)
    atomic_write(link, lambda tmp: tmp.write_bytes(b"new"))
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert target.read_bytes() == b"keep"


def test_two_outputs_of_one_run_never_share_a_file(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    cell = cells / "r00_c00.png"
    with pytest.raises(ValueError, match=r"r00_c00\.png is also --out"):
        refuse_overwriting_inputs({"--out": cells / "." / "r00_c00.png", "cell r00_c00.png": cell},
                                  {})
    cell.write_bytes(b"x")
    hard = tmp_path / "hard.png"
    os.link(cell, hard)
    with pytest.raises(ValueError, match="one run never writes two outputs to one file"):
        refuse_overwriting_inputs({"--out": hard, "cell": cell}, {})
    refuse_overwriting_inputs({"--out": tmp_path / "g.png", "cell": cell}, {})


def test_csv_text_cells_never_start_a_formula(tmp_path):
    import csv

    import torch

    from vslerp.stats.scoring import write_scores_csv

    names = ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "plain.png", "a=b"]
    scores = torch.tensor([0.5, -0.25, 0.0, 1.0, 0.1, 0.2, 0.3])
    path = write_scores_csv(tmp_path / "s.csv", names, scores, header={"model": "m"})
    rows = list(csv.reader(line for line in path.read_text().splitlines() if not line.startswith("#")))
    assert rows[0] == ["name", "conformity"]
    assert [r[0] for r in rows[1:]] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2+3", "'@SUM(A1)",
                                        "'\tx", "plain.png", "a=b"]
    assert rows[2][1] == "-0.250000"  # a number stays a number


# -- the CLI: grid, animate, batch on the tiny random Kandinsky -------------------------------


def _one_line(code, err, command):
    assert code == 2, err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"vslerp {command}: error: "), err
    assert "Traceback" not in err and "Exception ignored" not in err
    return lines[0]


def test_special_outputs_are_refused_before_rendering(work, tmp_path, capsys, no_models, fifo):
    root, _ = work
    src, tgt = root / "src.png", root / "tgt.png"
    device = tmp_path / "null.png"
    device.symlink_to("/dev/null")
    side = tmp_path / "s.json"  # the sidecar of s.png
    os.mkfifo(side)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(src), "target": "a cat", "name": "pipe"}) + "\n")
    gif = tmp_path / "pipe.gif"
    os.mkfifo(gif)
    cases = [
        (["grid", src, tgt, "--out", fifo, "--overwrite"], "FIFO"),
        (["grid", src, tgt, "--out", device, "--overwrite"], "character device"),
        (["grid", src, tgt, "--out", tmp_path / "s.png", "--overwrite"], "FIFO"),
        (["grid", src, tgt, "--out", tmp_path / "g.png", "--cells-dir", tmp_path, "--thetas",
          "0", "--alphas", "0"], "FIFO"),  # not --overwrite: the cells' check would read it
        (["animate", src, tgt, "--out", gif, "--overwrite"], "FIFO"),
        (["batch", jobs, "--out-dir", tmp_path, "--overwrite"], "FIFO"),
    ]
    for args, kind in cases:
        if "--cells-dir" in args:
            os.mkfifo(tmp_path / "r00_c00.png")
        line = _one_line(*cli(capsys, *args)[::2], args[0])
        assert kind in line and "regular file" in line, line
    assert device.is_symlink() and os.path.exists("/dev/null")
    for path in (fifo, side, gif, tmp_path / "r00_c00.png"):
        assert stat.S_ISFIFO(os.stat(path).st_mode)


def test_out_equal_to_one_of_its_cells_is_refused_before_rendering(work, tmp_path, capsys,
                                                                  no_models):
    root, _ = work
    cells = tmp_path / "cells"
    for extra in ([], ["--overwrite"]):
        line = _one_line(*cli(capsys, "grid", root / "src.png", root / "tgt.png", "--thetas",
                              "0,1", "--alphas", "0", "--out", cells / "r01_c00.png",
                              "--cells-dir", cells, *extra)[::2], "grid")
        assert "r01_c00.png" in line and "two outputs to one file" in line, line
    assert not cells.exists() or not any(cells.iterdir())


def test_a_batch_leaves_another_runs_temporary_alone(work, tmp_path, capsys):
    """A run owns other.png and is writing its temporary file (a long encode) when vslerp batch
    takes the folder: the batch renders, and the first run still commits its output."""
    from vslerp.stats.outputs import TEMP_MARK

    root, model = work
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(root / "src.png"), "target": "a cat",
                                "thetas": [0], "alphas": [0], "name": "b"}) + "\n")
    other = tmp_path / "other.png"
    seen = {}

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"first half ")
            fh.flush()
            seen["batch"] = cli(capsys, "batch", jobs, "--out-dir", tmp_path, "--no-progress",
                                *model)
            fh.write(b"second half")

    with output_lock(other):
        atomic_write(other, write)
    code, _, err = seen["batch"]
    assert code == 0, err
    assert other.read_bytes() == b"first half second half"
    assert (tmp_path / "b.png").is_file() and not list(tmp_path.glob(f"*{TEMP_MARK}*"))


def _full_disk(monkeypatch, format_):
    """PIL's writer fails with ENOSPC half-way through files of ``format_`` (a full disk)."""
    save = Image.Image.save

    def full(self, fp, format=None, **kwargs):
        if (format or "").upper() != format_:
            return save(self, fp, format=format, **kwargs)
        if hasattr(fp, "write"):  # imageio hands Pillow a file object
            fp.write(b"GIF89a half")
        else:
            with open(fp, "wb") as fh:
                fh.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    return unraisable


@pytest.mark.parametrize("command", ["grid", "animate"])
def test_a_full_disk_is_one_line_and_leaves_nothing(work, tmp_path, capsys, monkeypatch, command):
    root, model = work
    out = tmp_path / ("g.png" if command == "grid" else "a.gif")
    unraisable = _full_disk(monkeypatch, "PNG" if command == "grid" else "GIF")
    extra = ["--thetas", "0", "--alphas", "0"] if command == "grid" else ["--frames", "2"]
    result = cli(capsys, command, root / "src.png", root / "tgt.png", *extra, "--out", out,
                 "--no-progress", *model, "--device", "cpu")
    gc.collect()  # an unclosed writer would complain now ("Exception ignored in ...__del__")
    line = _one_line(*result[::2], command)
    assert os.strerror(errno.ENOSPC) in line and str(out) in line, line
    assert not unraisable, unraisable
    assert list(tmp_path.iterdir()) == []  # no sidecar, no temporary, no lock file


MP4_FULL = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from PIL import Image
    from vslerp.ui.images import save_animation
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), np.uint8))
              for i in range(6)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # ffmpeg inherits it
    try:
        save_animation(frames, sys.argv[1])
    except OSError as err:
        print("error:", err)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_an_mp4_that_ffmpeg_could_not_finish_is_not_committed(tmp_path):
    """imageio-ffmpeg does not report ffmpeg's exit status: a full disk (here a file-size
    limit ffmpeg inherits) left a truncated MP4 and no error."""
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "a.mp4"
    proc = subprocess.run([sys.executable, "-c", MP4_FULL, str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"error: cannot write {out}: ffmpeg did not finish"), proc.stdout
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_batch_renders_again_a_truncated_png(work, tmp_path, capsys):
    root, model = work
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": str(root / "src.png"), "target": "a cat",
                                "thetas": [0, 1], "alphas": [0], "name": "t"}) + "\n")
    batch = ["batch", jobs, "--out-dir", tmp_path / "out", "--no-progress", "--prior-steps", 2, *model]
    png = tmp_path / "out" / "t.png"
    code, _, err = cli(capsys, *batch)
    assert code == 0, err
    whole = png.read_bytes()
    png.write_bytes(whole[: len(whole) // 2])  # a copy cut short, a disk that filled up
    code, stdout, err = cli(capsys, *batch)
    assert code == 0 and "rendered 1 jobs" in stdout, (stdout, err)
    assert png.read_bytes() == whole  # the same render again, complete
    code, stdout, _ = cli(capsys, *batch)
    assert code == 0 and "already rendered" in stdout
    png.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one bit flipped in the IEND CRC
    code, stdout, err = cli(capsys, *batch)
    assert code == 0 and "rendered 1 jobs" in stdout, (stdout, err)
    assert png.read_bytes() == whole
