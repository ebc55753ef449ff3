"""Server-side exposures: paths a client names, confined to the administrator's data root.

A path is taken relative to the root (a leading '/' is allowed and means the root too); a '..'
part is refused outright, and every file a path, folder or glob expands to is resolved through
its symlinks and must still lie inside the root. Nothing outside the root is ever opened, listed
or named back to the client.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path, PurePosixPath

from tsphot.ingest import FITS_SUFFIXES

MAX_FILES = 100_000


class PathRefused(ValueError):
    """A client path that is outside the data root, missing, or matches nothing."""


def _inside(root: Path, path: str) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def confine(root: Path | None, entry: str) -> list[str]:
    """The real files (sorted) that one client entry names under the root: a file, a folder of
    FITS files, or a glob. Raise PathRefused with a message fit for the client."""
    if root is None:
        raise PathRefused(
            "server-side paths are not enabled on this server (it has no data root): upload the "
            "files with POST /api/v1/uploads and give their ids"
        )
    if not entry or "\x00" in entry or len(entry) > 4096:
        raise PathRefused(f"{entry[:80]!r}: not a usable path")
    rel = PurePosixPath(entry.replace("\\", "/"))
    if ".." in rel.parts:
        raise PathRefused(f"{entry!r}: '..' is not allowed; give a path inside the data root")
    rel_text = str(rel).lstrip("/")
    full = os.path.join(str(root), rel_text) if rel_text not in ("", ".") else str(root)
    if any(c in rel_text for c in "*?["):
        found = sorted(f for f in glob.glob(full) if os.path.isfile(f) or os.path.islink(f))
        if not found:
            raise PathRefused(f"{entry!r}: matches no file under the data root")
    elif os.path.isdir(full):
        if not _inside(root, full):
            raise PathRefused(f"{entry!r}: outside the data root")
        found = sorted(
            os.path.join(full, f)
            for f in os.listdir(full)
            if f.lower().endswith(FITS_SUFFIXES) and os.path.isfile(os.path.join(full, f))
        )
        if not found:
            raise PathRefused(f"{entry!r}: folder holds no FITS files (*.fits, *.fit, *.fits.gz)")
    elif os.path.lexists(full):
        found = [full]
    else:
        raise PathRefused(f"{entry!r}: no such file under the data root")
    out = []
    for f in found[:MAX_FILES]:
        if not _inside(root, f):
            raise PathRefused(f"{entry!r}: {Path(f).name} leads outside the data root (symlink)")
        if not os.path.isfile(f):
            raise PathRefused(f"{entry!r}: {Path(f).name} is not a file")
        out.append(os.path.realpath(f))
    if len(found) > MAX_FILES:
        raise PathRefused(f"{entry!r}: more than {MAX_FILES} files")
    return out
