"""Writing output files so that a crash or an error never leaves one half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autopar.errors import AutoparError


class OutputError(AutoparError):
    """An output file cannot be written where it was asked for."""


def check_writable(path: str | os.PathLike[str]) -> None:
    """Refuse an output whose directory is missing; commands that measure for minutes call it
    first, so the mistake costs nothing."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist; create it "
                          "or name another path")


def write_atomically(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, renamed into
    place: readers see the old file or the new one, never a part. Permissions follow the
    umask, as for a file opened normally."""
    check_writable(path)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
