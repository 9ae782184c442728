"""Issue 27, the shared output layer (vslerp.stats.outputs): a live writer's temporary file is
never removed as stale; special files are never outputs; two outputs of one run never share a
file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from vslerp.stats.outputs import (
    TEMP_MARK,
    atomic_write,
    check_regular_output,
    check_writable,
    output_lock,
    refuse_overwriting_inputs,
    remove_stale_temporaries,
)

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
    import stat

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
