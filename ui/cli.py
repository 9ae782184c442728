"""vslerp: vertical-SLERP image editing in raw CLIP space, and the geometry of that space.

Each subcommand lives in its own module under ``vslerp.ui`` (``cmd_*.py``) exposing
``register(subparsers)``, which adds a parser whose default ``func(args) -> int`` runs it.
Importing this module (and ``vslerp --help``) imports no torch: the commands import their
libraries when they run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

from vslerp._version import __version__

__all__ = ["CLIError", "build_parser", "main"]

# Each command's module, in the order `vslerp --help` lists them. A run imports only its own
# command's module (``vslerp --help`` imports them all); a module that is not there (an
# optional extra missing) is skipped, so the help lists exactly what works.
_COMMANDS = {
    "grid": "vslerp.ui.cmd_grid",
    "animate": "vslerp.ui.cmd_animate",
    "mix": "vslerp.ui.cmd_mix",
    "batch": "vslerp.ui.cmd_batch",
    "stats": "vslerp.ui.cmd_stats",  # stats compute, stats report
    "conformity": "vslerp.ui.cmd_stats",
    "ui": "vslerp.ui.cmd_ui",  # the Gradio editor
    "info": "vslerp.ui.cmd_info",
}


class CLIError(Exception):
    """A user's mistake: printed as one line on stderr, exit status 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr with exit status 2.

    Each one records itself in its defaults (``_cli_parser``): the innermost subcommand's wins,
    so errors found after parsing (unknown options) are reported as ``vslerp grid: error: ...``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(_cli_parser=self)

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a command, only that command's module is imported."""
    parser = _Parser(prog="vslerp", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"vslerp {__version__} (Python {sys.version.split()[0]})")
    parser.add_argument("--verbose", action="store_true",
                        help="show full tracebacks (for bug reports)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    command = next((a for a in (argv or ()) if not a.startswith("-")), None)
    modules = [_COMMANDS[command]] if command in _COMMANDS else dict.fromkeys(_COMMANDS.values())
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # this command is not part of this install
                continue
            raise
        module.register(subparsers)
    for sub in subparsers.choices.values():  # `vslerp CMD ... --verbose` works too
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks (for bug reports)")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``vslerp: warning: ...`` (not Python's two-line default)."""
    text = " ".join(str(message).split())
    try:
        print(f"vslerp: warning: {text}", file=file or sys.stderr)
    except OSError:  # stderr gone: as warnings.showwarning does
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vslerp`` console script."""
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "_cli_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vslerp: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError) as err:
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"vslerp {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    # Run as `python -m vslerp.ui.cli` this file is `__main__`, a second copy of the module:
    # the subcommands raise `vslerp.ui.cli.CLIError`, so run that module's main().
    from vslerp.ui.cli import main as _main

    sys.exit(_main())
