"""Saving that never destroys what was there: write beside the target, then rename.

A save interrupted midway (a full disk, Ctrl-C, a killed process) must leave an
existing file as it was and no partial file behind. Every writer in finetunekit
(`save_model`, `export`, checkpoints) writes into a temporary name in the target's
own folder (so the rename stays on one file system, where `os.replace` is atomic)
and renames it over the target only once the write has finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["expand", "write_beside"]

logger = logging.getLogger("finetunekit")


def expand(path: str | os.PathLike[str]) -> Path:
    """`path` with `~` expanded, so `save("~/m.keras")` writes to the home folder."""
    return Path(os.fspath(path)).expanduser()


@contextlib.contextmanager
def write_beside(target: Path, *, folder: bool = False, log: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `target`; renames it over `target` on success.

    The temporary name keeps the target's ending (Keras picks the format by it) and
    starts with a dot, so a listing does not show it as a finished file. On any
    exception (KeyboardInterrupt too) the temporary is removed and `target` is left
    as it was. Overwriting an existing target is allowed and logged.

    Args:
        target: the file (or, with `folder=True`, the folder) to write.
        folder: the writer makes a folder (a SavedModel). Its old version is moved
            aside and removed after the new one is in place (a folder cannot be
            renamed over a non-empty one in one step).
        log: log the replacement of an existing target (off for checkpoints, which
            replace their file after every epoch).

    Example:
        >>> with write_beside(Path("model.keras")) as temp:
        ...     model.save(temp)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent
    )
    os.close(handle)
    temp = Path(name)
    if folder:
        temp.unlink()  # the writer creates the folder itself
    existed = target.exists()
    old = target.with_name(f".{target.name}.old")
    try:
        yield temp
        if folder and existed:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(temp, target)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        if folder and old.exists():
            if not target.exists():  # the new folder never arrived: put the old one back
                os.replace(old, target)
            shutil.rmtree(old, ignore_errors=True)
    if existed and log:
        logger.info("replaced the existing %s", target)
