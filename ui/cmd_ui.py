"""`vslerp ui`: start the Gradio editor (binds 127.0.0.1; --share off by default)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from vslerp.defaults import DEFAULT_DECODER, DEFAULT_PRIOR
from vslerp.ui.options import (
    DTYPE_HELP,
    add_ip_adapter_option,
    add_tiny_random_option,
    dtype_arg,
    port_arg,
    positive_int,
)

__all__ = ["load_pipeline", "model_spec", "register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="start the Gradio editor in the browser",
                              description=__doc__)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=port_arg, default=7860, help="port (7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a public *.gradio.live link (off by default)")
    p.add_argument("--model", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 decoder (default {DEFAULT_DECODER}), an unCLIP/Karlo or Stable "
                        "unCLIP model, a Stable Diffusion 1.5 / SDXL base (with --ip-adapter), or a folder "
                        "saved by save_pretrained")
    p.add_argument("--prior", default=None, metavar="DIR|ID",
                   help=f"Kandinsky 2.2 prior (default {DEFAULT_PRIOR})")
    add_ip_adapter_option(p)
    p.add_argument("--stats", type=Path, default=None, metavar="FILE",
                   help="statistics file for the image mean (default: the prior's clip_mean)")
    p.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="embeddings folder (stats compute --save-embeddings): reference distribution "
                        "of the conformity histogram")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda, mps, then cpu, or cpu where ACCELERATE_USE_CPU is set)")
    p.add_argument("--dtype", type=dtype_arg, default=None, metavar="DTYPE",
                   help=f"weights dtype: {DTYPE_HELP} (default: float16 on CUDA, else float32)")
    p.add_argument("--concurrency", type=positive_int, default=1,
                   help="pipeline jobs the queue runs at once (1 per device)")
    add_tiny_random_option(p)
    p.set_defaults(func=run)


def model_spec(args, tmp_root: str | Path | None = None):
    """The models the options name, as a :class:`~vslerp.ui.render.RenderSpec` (no inputs yet):
    the editor's renders start from it. ``--tiny-random`` builds a tiny random Kandinsky in
    ``tmp_root`` (on the CPU unless ``--device`` says otherwise)."""
    from vslerp.ui.render import RenderSpec

    model, prior, device = args.model, args.prior, args.device
    if args.tiny_random:
        from vslerp.ui.runtime import build_tiny_random

        prior, model = build_tiny_random(Path(tmp_root or tempfile.mkdtemp(prefix="vslerp-tiny-")))
        device = device or "cpu"
    stats = str(Path(args.stats).expanduser().resolve()) if args.stats is not None else None
    return RenderSpec(model=model, prior=prior, stats=stats, dtype=args.dtype, device=device,
                      ip_adapter=getattr(args, "ip_adapter", None),
                      ip_adapter_image_encoder=getattr(args, "ip_adapter_image_encoder", None))


def load_pipeline(spec, stats=None):
    """The VSlerpPipeline of ``spec`` (:func:`vslerp.ui.render.load_pipeline`, the loader's own
    errors). stats: the image mean's source (None: the saved folder's statistics, else the
    prior's clip_mean); ``run`` loads ``--stats`` itself first, to name it in its errors."""
    from dataclasses import replace

    from vslerp.ui.render import load_pipeline as load

    return load(replace(spec, stats=None), stats=stats)


def _check_port(host: str, port: int, CLIError) -> None:  # noqa: N803 - the CLI's exception class
    """Fail in a second, before the minute-long model load, when the port is taken."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise CLIError(f"cannot serve on {host}:{port}: {err}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as err:
            reason = "the port is in use" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
            raise CLIError(f"cannot serve on {host}:{port}: {reason} (choose another with --port)") from None


def run(args) -> int:
    from vslerp.ui.checks import check_device
    from vslerp.ui.cli import CLIError

    if args.stats is not None and not args.stats.is_file():
        raise CLIError(f"--stats: no such file {args.stats}")
    check_device(args.device)
    from vslerp.ui.render import tiny_random_args

    tiny_random_args(args)  # --model, --prior, --ip-adapter refused with it
    if not args.tiny_random:
        from vslerp.ui.checks import check_backend_options

        check_backend_options(model_spec(args))  # --ip-adapter with an SD / SDXL --model only
    _check_port(args.host, args.port, CLIError)
    what = ("a tiny random model (noise-only smoke test)" if args.tiny_random else
            f"model {args.model}" + (f" with IP-Adapter {args.ip_adapter[0]}" if args.ip_adapter else "")
            if args.model and not args.prior else
            f"decoder {args.model or DEFAULT_DECODER}, prior {args.prior or DEFAULT_PRIOR}")
    print(f"vslerp ui: loading {what} — this can take a minute…", file=sys.stderr, flush=True)
    # One temporary root for everything the editor writes — the tiny model, its results, and
    # Gradio's uploads and served files (GRADIO_TEMP_DIR, unless set) — removed at exit, SIGTERM
    # and Ctrl-C included.
    with _exit_on_sigterm(), tempfile.TemporaryDirectory(prefix="vslerp-ui-") as tmp, _gradio_temp_dir(tmp):
        return _serve(args, tmp, CLIError)


@contextlib.contextmanager
def _exit_on_sigterm():
    """SIGTERM unwinds like Ctrl-C (the ``finally`` blocks and temporary folders run), exit 143."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _gradio_temp_dir(tmp: str):
    """Gradio's upload and cache folder inside ``tmp`` while serving, unless GRADIO_TEMP_DIR is set."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield
        return
    os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
    try:
        yield
    finally:
        os.environ.pop("GRADIO_TEMP_DIR", None)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _inputs(args, CLIError):  # noqa: N803 - the CLI's exception class
    """The --stats statistics and the --reference embeddings, read before any model loads."""
    stats = reference = None
    if args.stats is not None:
        from vslerp.stats import load

        try:
            stats = load(args.stats)
        except (OSError, ValueError, TypeError) as err:
            raise CLIError(f"--stats {args.stats}: {_one_line(err)}") from None
    if args.reference is not None:
        from vslerp.stats import read_embeddings

        try:
            reference = read_embeddings(args.reference)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise CLIError(f"--reference {args.reference}: {_one_line(err)}") from None
        if reference.image.shape[0] == 0:
            raise CLIError(f"--reference {args.reference}: the folder holds no image embeddings")
    return stats, reference


def _check_reference(pipe, args, reference, CLIError) -> None:  # noqa: N803 - the CLI's exception class
    """The reference embeddings must come from this model's image encoder."""
    from vslerp.stats import encoder_fingerprint

    dim = int(pipe.image_encoder.config.projection_dim)
    theirs = reference.metadata.get("encoder_fingerprint")
    if int(reference.image.shape[1]) != dim:
        raise CLIError(f"--reference {args.reference}: its embeddings are {int(reference.image.shape[1])}-d, "
                       f"this model's image encoder gives {dim}-d (embeddings of another encoder)")
    if theirs and theirs != encoder_fingerprint(pipe.image_encoder):
        raise CLIError(f"--reference {args.reference}: its embeddings come from another image encoder "
                       f"(fingerprint {theirs}, this model's is {encoder_fingerprint(pipe.image_encoder)})")


def _serve(args, tmp: str, CLIError) -> int:  # noqa: N803 - the CLI's exception class
    try:
        import gradio  # noqa: F401

        from vslerp.ui.editor import build_editor, launch_kwargs
    except ImportError as err:
        raise CLIError(f"the editor needs gradio ({err}); install vslerp[ui]") from None
    stats, reference = _inputs(args, CLIError)
    spec = model_spec(args, tmp)
    from vslerp.pipelines.loading import KANDINSKY, backend_of

    # Kandinsky 2.2 loads with its prior's clip_mean (--stats is checked against it below, to name
    # it); the other backends have no mean of their own: they load with --stats
    own_mean = args.tiny_random or spec.model is None or backend_of(spec.model) in (None, KANDINSKY)
    try:
        pipe = load_pipeline(spec, stats=None if own_mean else stats)
    except (OSError, ValueError, TypeError, RuntimeError) as err:  # the loader's message names the model
        raise CLIError(_one_line(err)) from None
    if stats is not None:  # the editor's startup mean, passed to each render (the pipe is not changed)
        try:
            stats = pipe.check_statistics(stats)
        except (ValueError, TypeError) as err:
            raise CLIError(f"--stats {args.stats} does not fit the model: {_one_line(err)}") from None
    if reference is not None:
        _check_reference(pipe, args, reference, CLIError)
        reference = reference.image
    pipe.set_progress_bar_config(disable=False, leave=False)
    demo = build_editor(pipe, spec=spec, statistics=stats, tiny_random=args.tiny_random,
                        concurrency=args.concurrency, reference=reference, out_dir=Path(tmp) / "editor")
    try:
        # prevent_thread_lock: launch returns once the server answers; then we say so and block.
        demo.launch(prevent_thread_lock=True, **launch_kwargs(args.host, args.port, args.share))
    except Exception as err:  # a busy port, a bad host, ...: one line, exit 2
        demo.close()
        raise CLIError(f"cannot serve on {args.host}:{args.port}: {' '.join(str(err).split())}") from None
    try:
        print(f"vslerp ui: models loaded; serving on {demo.local_url}"
              + (f" and {demo.share_url}" if demo.share_url else ""), file=sys.stderr, flush=True)
        if args.share and not demo.share_url:
            print("vslerp ui: warning: no public share link could be made; serving locally only",
                  file=sys.stderr, flush=True)
        demo.block_thread()  # until Ctrl-C
    finally:
        demo.close()
    return 0
