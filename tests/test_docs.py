"""The docs check: every ```bash and ```python block of README.md and docs/*.md runs.

Each page's blocks run in order in a fresh folder holding the files the examples name
(cat.png, dog.png, val2017/, annotations/captions_val2017.json, …), with a Hugging Face cache
in which the model ids the pages name (Kandinsky 2.2, Karlo, Stable unCLIP, SD 1.5 / SDXL,
`h94/IP-Adapter` and the CLIPs to pair with them: `tests/docs_workspace.py`) hold tiny random
models, so every command runs verbatim, offline. The only changes made to what a block says, for speed on a CPU:

- rendering runs 2 denoising steps at 64 px: `--steps N` / `--size N` and the JSON keys
  `"steps"` / `"size"` are set to 2 / 64 in bash blocks, `vslerp grid|mix|animate|batch` get
  `--steps 2 --size 64` appended (the last value wins), and in Python blocks
  the pipelines' `__call__` is wrapped to use 2 steps (and 64 px on Kandinsky);
- commands that cannot run here are stood in for on PATH: `pip` (CI installs the project
  itself) prints what it would install; `vslerp ui` and `accelerate launch` parse their
  command line with the real parser, then `vslerp ui` stops (tests/test_editor*.py run the
  editor) and `accelerate launch` runs its vslerp command in one process.

Bash blocks run in bash, as written. Each `vslerp` command in them, and each python block, runs
in a process of its own forked from one server that imported torch, diffusers, transformers
and vslerp before any command (`serve`): fresh process state per command, as a subprocess
has, without ~10 s of imports each; a command given an environment that differs from the
server's runs as a real subprocess instead.

A block preceded by `<!-- docs-check: skip: REASON -->` is not run; the reason is required.
Run it with `python -m pytest -q -m docs tests/test_docs.py` (CI runs it in .ci/lowest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<skip><!-- docs-check: skip(?::\s*(?P<why>.*?))? -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<body>.*?)^```$", re.M | re.S)


def blocks(page: Path):
    """``(lang, body, skip_reason_or_None, line)`` for each bash/python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        why = (m.group("why") or "").strip() if m.group("skip") else None
        yield m.group("lang"), m.group("body"), why, line


def test_every_page_has_runnable_blocks_and_skips_say_why():
    assert len(PAGES) >= 7, [p.name for p in PAGES]
    for page in PAGES:
        for _lang, _body, why, line in blocks(page):
            assert why is None or why, f"{page.name}:{line}: a skipped block needs a reason"
    runnable = [b for p in PAGES for b in blocks(p) if b[2] is None]
    assert len(runnable) >= 20


# --- the fork server (see the module docstring): the stand-ins on PATH are tiny clients ---

_CLIENT = """#!{python} -IS
# docs check stand-in for `{name}`: runs in a fork of the docs check's server
# (tests/test_docs.py, serve), with this process's argv, cwd, environment and stdio.
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
socket.send_fds(s, [b"{name}"], [0, 1, 2])
s.sendall(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]).encode())
s.shutdown(socket.SHUT_WR)
reply = b"".join(iter(lambda: s.recv(64), b""))
if not reply:
    print("docs-check: the forked {name} died without an exit status", file=sys.stderr)
sys.exit(int(reply) if reply else 70)
"""

_PRELOAD = ["vslerp.pipelines", "vslerp.stats", "vslerp.stats.compute", "vslerp.stats.shard_stats",
            "vslerp.stats.shard_readers", "vslerp.stats.report", "vslerp.stats.plots",
            "vslerp.stats.scoring", "matplotlib.pyplot", "sklearn.linear_model"]
_PRELOAD_ATTRS = {"transformers": ["CLIPVisionModelWithProjection", "CLIPTextModelWithProjection",
                                   "CLIPTokenizer", "CLIPImageProcessor", "CLIPTextModel"],
                  "diffusers": ["PriorTransformer", "UNet2DConditionModel", "VQModel",
                                "DDPMScheduler", "UnCLIPScheduler", "KandinskyV22Pipeline",
                                "UnCLIPImageVariationPipeline"]}
_SHELL_VARS = {"PWD", "OLDPWD", "SHLVL", "_", "PS1", "PS2"}  # what bash adds or drops


def serve(fd: int) -> None:
    """Import the heavy modules once (no thread started: safe to fork), then fork per client."""
    import importlib
    import threading

    env = {k: v for k, v in os.environ.items() if k not in _SHELL_VARS}  # what imports see

    from vslerp.ui.cli import build_parser

    build_parser()  # imports every subcommand module
    for name in _PRELOAD:  # what the commands import lazily; only speed depends on this list
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for module, attrs in _PRELOAD_ATTRS.items():
        for attr in attrs:
            getattr(importlib.import_module(module), attr, None)
    if threading.active_count() != 1:
        print("docs-check server: threads after imports:", threading.enumerate(), flush=True)
    listener = socket.socket(fileno=fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            conn, _ = listener.accept()
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                listener.close()
                try:
                    _run_forked(conn, env)
                finally:
                    os._exit(70)  # no status sent: the client reports the death
            conn.close()
            _reap(os.WNOHANG)
    finally:
        _reap(0)  # SIGTERM: wait for the forks still running


def _reap(flags: int) -> None:
    try:
        while os.waitpid(-1, flags)[0]:
            pass
    except ChildProcessError:
        pass


def _run_forked(conn: socket.socket, server_env: dict[str, str]) -> None:
    """In the fork: become the client's process (stdio, cwd, environment), run, send status."""
    import atexit
    import traceback
    import types

    msg, fds, _flags, _addr = socket.recv_fds(conn, 64, 3)
    argv, cwd, env = json.loads(b"".join(iter(lambda: conn.recv(1 << 16), b"")))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    name = msg.decode()
    parse_only = name == "vslerp" and argv[:1] == ["ui"]  # tests/test_editor*.py run the editor
    if name == "vslerp" and argv[:1] in (["grid"], ["mix"], ["animate"], ["batch"]):
        argv = [*argv, "--steps", "2", "--size", "64"]  # the last value wins
    env_now = {k: v for k, v in env.items() if k not in _SHELL_VARS}
    changed = {k for k in env_now.keys() | server_env.keys() if env_now.get(k) != server_env.get(k)}
    if changed and not parse_only:  # an environment the imports did not see: a real subprocess
        print(f"docs-check: {name} as a subprocess ({', '.join(sorted(changed))} changed)",
              file=sys.stderr, flush=True)
        real = str(Path(sys.executable).with_name("vslerp")) if name == "vslerp" else sys.executable
        code = subprocess.run([real, *argv], env=env).returncode
        conn.sendall(str(code if code >= 0 else 128 - code).encode())
        return
    os.environ.update(env)
    try:
        if parse_only:
            from vslerp.ui.cli import build_parser

            build_parser().parse_args(argv)
            print("docs-check: vslerp ui parsed:", " ".join(argv))
            code = 0
        elif name == "vslerp":
            from vslerp.ui.cli import main

            sys.argv = ["vslerp", *argv]
            code = main()
        else:  # python -c CODE
            assert argv[0] == "-c", argv
            main_module = types.ModuleType("__main__")
            sys.modules["__main__"] = main_module
            sys.argv, sys.path[0] = ["-c"], ""
            exec(compile(argv[1], "<string>", "exec"), main_module.__dict__)
            code = 0
    except SystemExit as stop:
        code = stop.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()  # as the interpreter does on exit
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(str(code).encode())


_ACCELERATE_WRAPPER = """#!{python}
# docs check stand-in for `accelerate launch [launch options] (vslerp | -m MODULE) ARGS`.
import os, sys
args = sys.argv[1:]
assert args[0] == "launch", args
args = args[1:]
while args and args[0].startswith("--"):
    args = args[1 if args[0] in ("--multi_gpu", "--cpu") else 2:]
if args[0] == "-m":
    args = [{wrapper!r}, *args[2:]]
elif os.path.basename(args[0]) == "vslerp":
    args = [{wrapper!r}, *args[1:]]
os.execv(args[0], args)
"""

_PIP_WRAPPER = """#!/bin/sh
echo "docs-check: pip $* (not run: CI installs the project itself)"
"""

PRELUDE = """
import vslerp.pipelines.base as _docs_base
_docs_call = _docs_base.VSlerpBasePipeline.__call__
def _docs_fast(self, *args, **kwargs):
    kwargs["num_inference_steps"] = 2
    if self.backend in ("kandinsky2.2", "flux"):
        kwargs["height"] = kwargs["width"] = 64
    return _docs_call(self, *args, **kwargs)
_docs_base.VSlerpBasePipeline.__call__ = _docs_fast
"""


def _speed(body: str) -> str:
    body = re.sub(r"--steps \d+", "--steps 2", body)
    body = re.sub(r"--size \d+", "--size 64", body)
    body = re.sub(r'"steps": \d+', '"steps": 2', body)
    return re.sub(r'"size": \d+', '"size": 64', body)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """``(base, env)``: the stand-ins in ``base/bin`` (first on PATH in ``env``) and the fork
    server behind them, started first so that its imports overlap the workspace's setup."""
    base = tmp_path_factory.mktemp("docs")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    sock_path = str(bin_dir / "docs.sock")
    for name in ("vslerp", "docs-python"):
        (bin_dir / name).write_text(_CLIENT.format(python=sys.executable, name=name,
                                                   sock=sock_path))
    wrapper = bin_dir / "vslerp"
    (bin_dir / "accelerate").write_text(_ACCELERATE_WRAPPER.format(python=sys.executable,
                                                                  wrapper=str(wrapper)))
    (bin_dir / "pip").write_text(_PIP_WRAPPER)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "HF_HOME": str(base / "hf"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.pop("VSLERP_TEST_KILL_AFTER_SHARDS", None)
    # The server's socket listens before the server starts: clients queue, never race it.
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    start = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_docs; "
             f"sys.path.pop(0); test_docs.serve({listener.fileno()})")
    server = subprocess.Popen([sys.executable, "-c", start], cwd=base, env=env,
                              stdin=subprocess.DEVNULL, pass_fds=[listener.fileno()])
    listener.close()
    yield base, env
    server.terminate()  # the server waits for its forks, then exits
    try:
        server.wait(timeout=600)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def workspace(stand_ins):
    """A folder of example inputs, a fake HF cache with tiny models, and stand-ins on PATH."""
    from docs_workspace import build_workspace

    base, env = stand_ins
    return build_workspace(base, env), env, base / "bin"


def test_forked_commands_behave_as_processes(stand_ins):
    """What a block sees of a forked command: its exit status, stdin, stdout and stderr, cwd,
    a fresh ``__main__``, and an environment the server did not import with (a subprocess)."""
    base, env = stand_ins
    script = """cd "$1"
    vslerp no-such-command 2> err.txt && exit 9 || [ $? = 2 ]
    [ "$(wc -l < err.txt)" = 1 ]
    docs-python -c 'import sys; sys.exit(3)' && exit 9 || [ $? = 3 ]
    [ "$(echo hi | docs-python -c 'import os, sys; print(sys.stdin.read().strip(), os.getcwd(), __name__)')" = "hi $1 __main__" ]
    [ "$(FOO=1 docs-python -c 'import os; print(os.environ["FOO"])' 2> note.txt)" = 1 ]
    grep -q "as a subprocess (FOO changed)" note.txt
    """
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script, "-", str(base)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_blocks_run(page, workspace, tmp_path):
    inputs, env, bin_dir = workspace
    cwd = tmp_path / "work"
    shutil.copytree(inputs, cwd)
    ran = 0
    for lang, body, why, line in blocks(page):
        if why is not None:
            continue
        if lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", _speed(body)]
        else:
            cmd = [str(bin_dir / "docs-python"), "-c", PRELUDE + textwrap.dedent(body)]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (f"{page.name}:{line} ({lang}) failed, exit {proc.returncode}\n"
                                      f"--- block ---\n{body}\n--- stdout ---\n{proc.stdout[-2000:]}\n"
                                      f"--- stderr ---\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran or all(why for _l, _b, why, _n in blocks(page)), f"{page.name}: no block ran"
