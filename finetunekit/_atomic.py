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
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetunekit.errors import OutputPathError

__all__ = ["expand", "write_beside", "check_writable"]

logger = logging.getLogger("finetunekit")


def expand(path: str | os.PathLike[str]) -> Path:
    """`path` with `~` expanded, so `save("~/m.keras")` writes to the home folder."""
    return Path(os.fspath(path)).expanduser()


def name_suggested(target: Path, given: Any, suffix: str) -> tuple[bool, Path]:
    """For a target without the right `suffix`: whether it names a folder (one that
    exists, or a path written with a trailing separator), and the file to suggest
    instead, inside that folder or beside it with the suffix."""
    folder = target.is_dir() or os.fspath(given).endswith(("/", os.sep))
    return folder, target / f"model{suffix}" if folder else target.with_suffix(suffix)


def check_writable(
    target: Path, what: str = "", *, folder: bool = False, error: type[Exception] | None = None
) -> None:
    """Raises now, before any work, where `target` could not be written later.

    Makes the target's folder (as the write would) and a temporary file in it, removed at
    once. Checked before a fit, so a checkpoint folder that cannot be written fails in
    the first second, not after the first epoch.

    Args:
        target: the file (or, with `folder=True`, the folder) to be written.
        what: how the message names the argument, e.g. `"checkpoint_dir"` (none: "").
        folder: the target is a folder (a SavedModel).
        error: the exception type to raise (default `OutputPathError`).

    Raises:
        OutputPathError: (or `error`) the folder cannot be made or written, or a folder
            stands where a file is to go.
    """
    _temporary(target, "", folder=folder, what=what, error=error).unlink()


def _temporary(
    target: Path,
    suffix: str,
    *,
    folder: bool = False,
    what: str = "",
    error: type[Exception] | None = None,
) -> Path:
    """An empty temporary file beside `target` (its folder made), or our error saying why not."""
    make = error or OutputPathError
    named = f"{what}: " if what else ""
    if not folder and target.is_dir():
        raise make(
            f"{named}{str(target)!r} is a folder; pass the name of a file to write (inside "
            "it, or beside it)."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = _new_file(target.parent, f".{target.stem}.", suffix)
    except OSError as exc:
        # A file where a folder of the path should be: name it, not just "File exists".
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        reason = f"{str(blocker)!r} is a file, not a folder" if blocker else exc.strerror or exc
        raise make(
            f"{named}{'c' if what else 'C'}annot write {str(target)!r} ({reason}). "
            "Pass a path in a folder you can write to."
        ) from None
    os.close(handle)
    return Path(name)


def _new_file(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new empty file with a name of its own, made as `open()` makes one.

    `tempfile.mkstemp` makes its files owner-only (0o600), and renamed over the target
    that mode stayed: a model saved for a serving user or a group could not be read.
    Made with `os.open(..., 0o666)`, the file gets what the umask allows.
    """
    for _ in range(100):
        name = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), str(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {str(folder)!r}")


@contextlib.contextmanager
def write_beside(target: Path, *, folder: bool = False, log: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `target`; renames it over `target` on success.

    The temporary name keeps the target's ending (Keras picks the format by it) and
    starts with a dot, so a listing does not show it as a finished file. On any
    exception (KeyboardInterrupt too) the temporary is removed and `target` is left
    as it was. Overwriting an existing target is allowed and logged.

    Raises:
        OutputPathError: the target's folder cannot be made or written, or a folder
            stands where the file is to go; raised before the writer runs.

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
    temp = _temporary(target, target.suffix, folder=folder)
    if folder:
        temp.unlink()  # the writer creates the folder itself
    existed = target.exists()
    old = target.with_name(f".{target.name}.old")
    try:
        yield temp
        if folder and existed:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        if existed and temp.is_file() and target.is_file():  # a file replaced keeps its mode
            os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
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
