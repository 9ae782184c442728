"""Writing outputs safely: the one home of every rule about files vslerp writes.

- :func:`atomic_write`: a temporary name beside the output, then a rename (never a
  half-written file); the temporary name is recognisable (``.NAME.vslerp-tmp-XXXXXXXX.SUFFIX``)
  and its writer holds an exclusive ``flock`` on it while writing, so that the next run owning
  that output removes what a killed run left, and never a live writer's file.
- An output is a regular file: an existing FIFO, device or socket is refused (never replaced
  by a file, never written through); a symlink to a regular file is replaced by the output
  (its target is not written).
- :func:`output_lock`: one run at a time owns an output (an exclusive ``filelock`` lock held
  for the whole run, its file removed when the run ends); a second run fails at once with
  :class:`OutputBusy` naming the output.
- :func:`refuse_overwriting_inputs` and :func:`note_input`: an output never replaces an input
  of the same run, nor another output of the same run. Readers (``stats.load``, the caption and shard readers, the pipeline's
  image paths, …) note every file they read; :func:`atomic_write` refuses to replace one of
  them, whoever calls it (CLI, editor or the Python API), and the CLI checks its options up
  front, before models load.
- :func:`check_writable`: can an output be written at all (checked before expensive work).
- :func:`spreadsheet_safe`: a text cell of a CSV never starts a spreadsheet formula.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

try:
    import fcntl  # flock on the temporary files (POSIX)
except ImportError:  # Windows: an open file cannot be removed there, so no lock is needed
    fcntl = None

__all__ = [
    "OutputBusy",
    "TEMP_MARK",
    "atomic_write",
    "check_regular_output",
    "check_writable",
    "forget_inputs",
    "note_input",
    "output_lock",
    "refuse_overwriting_inputs",
    "remove_stale_temporaries",
    "spreadsheet_safe",
]

TEMP_MARK = ".vslerp-tmp-"  # in every temporary name atomic_write makes
_LOCK_NAME = ".vslerp.lock"  # the lock file of a folder output
_INPUTS: dict[Path, str] = {}  # resolved path -> what it was read as, for this process


class OutputBusy(OSError):
    """Another run holds the lock of an output (one run at a time owns an output)."""


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve(strict=False)


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (after symlinks; hard links too)."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def note_input(path: str | Path, what: str = "input") -> None:
    """Record that this process read ``path`` (as ``what``): :func:`atomic_write` will refuse
    to replace it. Called by vslerp's readers; cheap (one path per file read)."""
    _INPUTS.setdefault(_resolved(path), what)


def forget_inputs() -> None:
    """Forget every input noted so far (for a long-lived session that wants to write over a
    file it read earlier, deliberately)."""
    _INPUTS.clear()


def _input_named(path: Path) -> str | None:
    target = _resolved(path)
    if target in _INPUTS:
        return _INPUTS[target]
    if path.exists():
        for seen, what in _INPUTS.items():
            if seen.exists() and _same_file(seen, path):
                return what
    return None


def _identity(path: Path) -> tuple:
    """What names one file: its (device, inode) where it exists, else its resolved path."""
    try:
        found = os.stat(path)
    except OSError:
        return ("path", str(_resolved(path)))
    return ("inode", found.st_dev, found.st_ino)


def refuse_overwriting_inputs(outputs: Mapping[str, str | Path | None],
                              inputs: Mapping[str, str | Path | None]) -> None:
    """Raise ``ValueError`` when an output is one of the inputs, or two outputs are one file
    (after symlinks, hard links).

    ``outputs`` and ``inputs`` map a name for the message (an option such as ``"--out"``) to a
    path, or None (absent, skipped). The CLI calls it with its options before any model loads;
    :func:`atomic_write` backs it up for files read later (images inside a folder input)."""
    seen: dict[tuple, str] = {}
    for out_name, out in outputs.items():
        if out in (None, ""):
            continue
        key = _identity(Path(out).expanduser())
        if key in seen:
            raise ValueError(f"{out_name} {out} is also {seen[key]}: one run never writes two "
                             "outputs to one file; choose another output path")
        seen[key] = out_name
    given = {name: Path(p).expanduser() for name, p in inputs.items() if p not in (None, "")}
    for out_name, out in outputs.items():
        if out in (None, ""):
            continue
        out = Path(out).expanduser()
        for in_name, src in given.items():
            if _same_file(out, src):
                raise ValueError(f"{out_name} {out} is the {in_name} this run reads: an output "
                                 "never replaces an input; choose another output path")


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_regular_output(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` does not exist or is a regular file.

    A FIFO, a device or a socket is never replaced by an output nor written through; a symlink
    to a regular file is accepted, and the output replaces the link (its target is untouched).
    Only ``stat``: a FIFO is never opened (that would block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # absent, a dangling link, unreadable: the write itself says why
        return
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise ValueError(f"{path} exists and is {kind}: vslerp writes only regular files; choose "
                     "another output path")


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV injection"


def spreadsheet_safe(text: str) -> str:
    """A CSV text cell as OWASP recommends against formula injection: one starting with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (spreadsheets then show
    it as text, and hide the quote). For text cells only: a negative number stays a number."""
    text = str(text)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Raise ``ValueError`` naming ``path`` unless an output can be written there.

    Checked before any expensive work: ``path`` must not be a folder (or, with
    ``folder=True``, must be a folder or not exist); the nearest existing ancestor must be a
    folder in which a file can be created (probed with a temporary file, so read-only mounts
    and root-squashed shares are caught too). Creates nothing that stays.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{path} is a folder, not a file")
    if not folder:
        check_regular_output(path)
    parent = path if folder else path.parent
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {path}: {ancestor} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise ValueError(f"cannot write {path}: folder {ancestor} is not writable "
                         f"({err.strerror or err})") from None
    return path


def _create_locked(tmp: Path) -> int | None:
    """Create ``tmp`` (O_EXCL) and hold an exclusive ``flock`` on it: the mark of a live writer
    that :func:`remove_stale_temporaries` checks. Returns the descriptor to keep open while
    writing (None where there is no ``flock``); raises ``FileExistsError`` if a cleaner removed
    the new file before it was locked (the caller takes another name)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    if fcntl is None:
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holds it only for as long as an unlink takes
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
            return fd  # no flock on this filesystem: a cleaner cannot lock it either, keeps it
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    if os.fstat(fd).st_nlink == 0:  # removed as stale between the create and the lock
        os.close(fd)
        raise FileExistsError(errno.EEXIST, "temporary file removed before it was locked", str(tmp))
    return fd


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The one way every vslerp output is written: a reader never sees a half-written file, and
    an error (or Ctrl-C) leaves nothing behind (a SIGKILL leaves the temporary file, which the
    next run owning the output removes: :func:`output_lock`; while ``write`` runs, the
    temporary file is locked, so no other run removes it). ``tmp`` is a :class:`Path` with
    ``path``'s suffix (so format-by-extension writers work; ``write`` must write into that
    file, not rename another one onto it); the file is created with mode 0666 & ~umask (the
    usual mode). Creates the parent folder. Refuses (``ValueError``) to replace a file this
    process read as an input (:func:`note_input`), or an existing output that is not a regular
    file (:func:`check_regular_output`).
    """
    path = Path(path)
    what = _input_named(path)
    if what is not None:
        raise ValueError(f"refusing to write {path}: it is the {what} this run reads "
                         "(an output never replaces an input)")
    check_regular_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(8):
            tmp = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}{path.suffix}"
            try:
                fd = _create_locked(tmp)
                break
            except FileExistsError:
                if attempt == 7:
                    raise
    except OSError as err:  # name the output, not the temporary file
        raise OSError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock: the file has its own name now
    return path


def _remove_if_stale(candidate: Path) -> bool:
    """Remove ``candidate`` (a temporary file) unless its writer is alive: it holds the file's
    ``flock`` (:func:`_create_locked`). Anything that cannot be checked is left alone."""
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # POSIX only
    try:
        fd = os.open(candidate, os.O_RDWR | flags)
    except PermissionError:  # another account's file: flock needs only a descriptor
        try:
            fd = os.open(candidate, os.O_RDONLY | flags)
        except OSError:
            return False
    except OSError:  # gone, a link, not a file
        return False
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode):
            return False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live run is writing it (or this filesystem cannot tell)
                return False
        now = os.stat(candidate, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return False  # renamed into place meanwhile: someone else's file under this name
        os.unlink(candidate)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | Path, *, folder: bool = False) -> list[Path]:
    """Remove what killed runs left of ``path``'s temporary files (every temporary file
    directly in ``path`` with ``folder=True``). A temporary file whose writer is alive (it
    holds the file's lock: another run writing an output of its own in this folder) is kept.
    Call only while owning the output (:func:`output_lock` does). Returns the files removed."""
    path = Path(path)
    where, pattern = (path, f".*{TEMP_MARK}*") if folder else (path.parent, f".{path.name}{TEMP_MARK}*")
    removed = []
    if where.is_dir():
        for stale in where.glob(pattern):
            if _remove_if_stale(stale):
                removed.append(stale)
    return removed


@contextlib.contextmanager
def output_lock(*paths: str | Path | None, folders: tuple[str | Path, ...] = (),
                what: str = "output") -> Iterator[None]:
    """Own the outputs ``paths`` (files) and ``folders`` for the duration of the block.

    An exclusive lock per output (``filelock.SoftFileLock``: ``.NAME.lock`` beside a file,
    ``.vslerp.lock`` inside a folder), taken without waiting: when another run holds one,
    :class:`OutputBusy` names that output. The lock file is created exclusively (``O_EXCL``) and
    removed on release, so a normal end leaves nothing; it records its owner's PID and start
    time, so a killed run's file is reclaimed by the next run on this host. One instance per
    call and ``thread_local=False``: a second thread of this process is refused like another run.
    Once owned, the temporary files a killed run left for these outputs are removed.
    """
    from filelock import SoftFileLock, Timeout

    targets = [(Path(p).expanduser(), False) for p in paths if p not in (None, "")]
    targets += [(Path(p).expanduser(), True) for p in folders if p not in (None, "")]
    with contextlib.ExitStack() as stack:
        for target, is_folder in sorted(targets, key=lambda t: str(_resolved(t[0]))):
            where = target if is_folder else target.parent
            where.mkdir(parents=True, exist_ok=True)
            lock_file = where / (_LOCK_NAME if is_folder else f".{target.name}.lock")
            lock = SoftFileLock(lock_file, timeout=0, thread_local=False)
            try:
                stack.enter_context(lock)
            except Timeout:
                raise OutputBusy(f"{what} {target} is being written by another vslerp run "
                                 f"(it holds {lock_file}); wait for it to finish or choose "
                                 "another output") from None
            remove_stale_temporaries(target, folder=is_folder)
        yield
