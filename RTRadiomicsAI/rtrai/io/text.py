"""Text files people write by hand (cohort lists and tables, settings, reference tables), read in one way: UTF-8
with or without a byte-order mark, and a clear :class:`~rtrai.core.errors.FormatError` for anything else."""

from __future__ import annotations

import os
from pathlib import Path

from rtrai.core.errors import FormatError


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of ``path``; ``what`` names it in the error ("a cohort list", ...) when it is not UTF-8 text or
    holds a NUL byte (a binary file given by mistake)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not {what}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
                          ) from None
    if "\x00" in text:
        raise FormatError(f"{path}: not {what}: line {text.count(chr(10), 0, text.index(chr(0))) + 1} holds a NUL "
                          "byte")
    return text
