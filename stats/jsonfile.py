"""Reading JSON that a user hands in: sidecars (``--from``, a batch's resume sidecars), jobs
files' lines, statistics files' metadata, captions files.

Every such read goes through :func:`parse_json` / :func:`read_json`, so each refuses the same
way, as one ``ValueError`` line naming the file (and the line of a JSONL file): not valid JSON,
not UTF-8, not a regular file, or nested deeper than :data:`~vslerp.defaults.MAX_JSON_DEPTH`
(no schema of this project nests more than a few levels; a 100 000-deep ``[[[…]]]`` would
otherwise be a ``RecursionError`` traceback, here or in whatever walks it later).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from vslerp.defaults import MAX_JSON_DEPTH

_SPACE = re.compile(r"[ \t\n\r]*").match  # JSON's whitespace (as json.decoder's own)

__all__ = ["JSONStream", "check_depth", "check_regular_file", "json_type", "parse_json", "read_json"]


def json_type(value) -> str:
    """What a JSON value is, in a message's words: null, bool, int, float, str, list, object."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_depth(value, where: str, limit: int = MAX_JSON_DEPTH) -> None:
    """``ValueError`` if ``value`` (parsed JSON) nests lists/objects deeper than ``limit``;
    walked with a stack, never recursively."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                raise ValueError(f"{where}: JSON nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))


def parse_json(text: str | bytes, where: str, limit: int = MAX_JSON_DEPTH):
    """``json.loads(text)``, or one ``ValueError`` starting with ``where`` (a file, ``file:line``):
    not valid JSON (with its line and column), not UTF-8, or nested deeper than ``limit``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text") from None
    except RecursionError:  # the C scanner's own guard, at ~1000 levels
        raise ValueError(f"{where}: JSON nested deeper than {limit} levels") from None
    check_depth(value, where, limit)
    return value


def check_regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file (or a link to one), checked with ``stat`` before any
    ``open`` (a FIFO would block it forever, a device would never end); else one line:
    ``FileNotFoundError``, ``IsADirectoryError`` or ``ValueError`` naming ``what``."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the name
        raise ValueError(f"{what} {path!r} cannot be read ({err})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a file")
        raise ValueError(f"{what} {path} is {kind}, not a regular file")
    return path


def read_json(path: str | Path, what: str, limit: int = MAX_JSON_DEPTH):
    """The JSON value in the file ``path`` (:func:`check_regular_file`, then :func:`parse_json`);
    every failure one line naming ``what`` and ``path``."""
    path = check_regular_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read ({err.strerror or err})") from None
    return parse_json(data, f"{what} {path}", limit)


class JSONStream:
    """A JSON document read piecewise from a text file: the members of its top-level object
    (:meth:`members`), then each member's value whole (:meth:`value`) or, for an array, one
    element at a time (:meth:`elements`). ``json.JSONDecoder.raw_decode`` over a buffer refilled
    from the file, so memory is one element plus the buffer, not the file; a reader that has
    what it needs stops early. Errors: one ``ValueError`` naming ``where`` and the line."""

    CHUNK = 1 << 20  # characters read at a time

    def __init__(self, handle, where: str, limit: int = MAX_JSON_DEPTH) -> None:
        self.handle, self.where, self.limit = handle, where, limit
        self.buf, self.pos, self.eof = "", 0, False
        self.line = 1  # the line self.buf starts on
        self.decoder = json.JSONDecoder()

    def _fail(self, what: str, offset: int | None = None):
        at = self.pos if offset is None else offset
        line = self.line + self.buf.count("\n", 0, at)
        raise ValueError(f"{self.where} is not valid JSON ({what} at line {line})")

    def _more(self, size: int) -> bool:
        """Drop what was consumed and read ``size`` more characters; False at the end."""
        if self.eof:
            return False
        if self.pos:
            self.line += self.buf.count("\n", 0, self.pos)
            self.buf, self.pos = self.buf[self.pos:], 0
        try:
            chunk = self.handle.read(size)
        except UnicodeDecodeError:
            raise ValueError(f"{self.where} is not UTF-8 text") from None
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end), not consumed."""
        while True:
            self.pos = _SPACE(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more(self.CHUNK):
                return ""

    def _expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            self._fail(f"expected {' or '.join(repr(c) for c in chars)}"
                       + (", got the end of the file" if not char else f", got {char!r}"))
        self.pos += 1
        return char

    def value(self, depth: int = 1, check: bool = True):
        """The next JSON value, whole (``depth``: its nesting level in the document). ``check``
        False: only the decoder's own recursion guard (~1000 levels), for a value the caller
        takes apart and does not keep (an annotation)."""
        size = self.CHUNK
        while True:
            if not self.peek():
                self._fail("expected a value, got the end of the file")
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._more(size):  # perhaps cut by the buffer's end: read more, again
                    size *= 2
                    continue
                self._fail(err.msg, err.pos)
            except RecursionError:
                raise ValueError(f"{self.where}: JSON nested deeper than {self.limit} levels") from None
            if end == len(self.buf) and self._more(size):  # a number may go on: read more
                continue
            self.pos = end
            if check and isinstance(value, (list, dict)):
                check_depth(value, self.where, self.limit - depth + 1)
            return value

    def members(self):
        """Yield the keys of the top-level object; the caller reads each one's value before
        asking for the next key (``ValueError`` if the document is not an object)."""
        if self.peek() != "{":
            raise ValueError(f"{self.where} is not a JSON object")
        self.pos += 1
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                self._fail("expected a key")
            key = self.value()
            self._expect(":")
            yield key
            if self._expect(",}") == "}":
                return

    def elements(self, depth: int = 2, check: bool = True):
        """Yield the elements of the array that comes next, one at a time (``depth``: theirs;
        ``check``: as :meth:`value`)."""
        self._expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value(depth, check)
            if self._expect(",]") == "]":
                return
