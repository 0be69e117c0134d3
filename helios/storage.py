"""Sharing a results folder safely: per-cell claims, stale temporary files, a write probe.

Claims
------
A driver about to run cell ``c`` into sweep folder ``d`` takes an exclusive,
non-blocking ``fcntl.flock`` on ``d/.claims/<c>.lock`` and holds it until the cell's
parts are written or its failure is recorded. A second sweep into the same folder at
the same time cannot take that claim: it defers the cell, runs other cells, and tries
again later; once it holds the claim it looks again whether the cell's ``cells`` part
exists, and skips the cell if so. So a cell is run and written by one driver at a time,
and not again once it is done, however many sweeps share the folder.

- ``flock`` locks belong to the open file and vanish when the holder dies (SIGKILL
  included), so a killed sweep leaves no lock behind to clean up.
- The lock file is removed when the claim is released. A taker checks, after locking,
  that the file it locked is still the one at the path (same device and inode) and
  locks again if not; so removing lock files cannot let two processes hold one claim.
- On NFS, Linux maps ``flock`` to POSIX byte-range locks, which NFSv4 servers honour
  across machines. On a file system without locks, claims fall back to no locking
  (one warning) and concurrent sweeps into one folder are not protected.

Temporary files
---------------
:func:`helios.results.write_atomic` writes ``<table>/.tmp-part-<cell>-<uuid>.tmp``
and renames it; a process killed between the two leaves the hidden file behind. Readers
never see it: :func:`helios.results.load` reads ``part-*.parquet``, pyarrow and pandas
datasets skip names starting with ``.``, and ``*.parquet`` globs (DuckDB's match hidden
names) skip the ``.tmp`` suffix. Only the holder of a cell's claim writes the cell's
parts, so a temporary file of a cell whose claim is free is stale:
:func:`remove_stale_temporaries` deletes those (the runner does, when a sweep starts and
when it claims a cell).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

CLAIMS_DIR = ".claims"

#: ``.tmp-part-<cell_id>-<uuid hex>.tmp``, as written by ``helios.results.write_atomic``.
_TEMPORARY = re.compile(r"\.tmp-part-(?P<cell>[0-9A-Za-z_-]+)-[0-9a-f]{32}\.tmp")

#: errno values of a file system that does not support ``flock``.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned_no_locks = False


class Claim:
    """An exclusive claim on one cell of one sweep folder; :meth:`release` it when done.

    Usable as a context manager. A claim with ``fd`` None is the no-op claim of a file
    system without locks.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether the claim is still held (not yet released)."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order; see the module docstring)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_path(sweep_dir: Path | str, cell_id: str) -> Path:
    """The lock file of cell ``cell_id`` in ``sweep_dir``."""
    return Path(sweep_dir) / CLAIMS_DIR / f"{cell_id}.lock"


def holder(sweep_dir: Path | str, cell_id: str) -> str:
    """``host:pid`` of the process that holds a cell's claim, as it wrote it ("" if unknown)."""
    try:
        return claim_path(sweep_dir, cell_id).read_text().strip()
    except OSError:
        return ""


def claim(sweep_dir: Path | str, cell_id: str, wait: bool = False) -> Claim | None:
    """Take the claim on a cell; None if another process holds it and ``wait`` is False.

    Parameters
    ----------
    sweep_dir : path
        ``<output_dir>/<sweep>`` (created if missing).
    cell_id : str
        The cell.
    wait : bool
        Block until the claim is free instead of returning None.
    """
    global _warned_no_locks
    path = claim_path(sweep_dir, cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            if not _warned_no_locks:
                _warned_no_locks = True
                warnings.warn(f"helios: {path.parent} does not support file locks; sweeps "
                              "running into this folder at the same time are not kept apart",
                              stacklevel=2)
            return Claim(path, None)
        try:
            mine, there = os.fstat(fd), os.stat(path)
            same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            # For people (and the "waiting for" message): who holds it.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
            return Claim(path, fd)
        os.close(fd)  # the holder released and removed the file meanwhile: lock the new one


def _temporaries(sweep_dir: Path) -> dict[str, list[Path]]:
    """Hidden temporary part files under ``sweep_dir``, by cell id."""
    found: dict[str, list[Path]] = {}
    if not sweep_dir.is_dir():
        return found
    for path in sweep_dir.glob("*/.tmp-part-*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match:
            found.setdefault(match["cell"], []).append(path)
    return found


def remove_stale_temporaries(sweep_dir: Path | str, cells: Iterable[str] | None = None,
                             held: bool = False) -> int:
    """Delete temporary part files left by killed writers; returns how many.

    Parameters
    ----------
    sweep_dir : path
        ``<output_dir>/<sweep>``.
    cells : iterable of str, optional
        Only these cells' files (default: every cell's).
    held : bool
        The caller already holds the claims of ``cells``; otherwise each cell's claim is
        taken (non-blocking) for the deletion, and a cell whose claim is held elsewhere,
        whose writer may be alive, is left alone.
    """
    sweep_dir = Path(sweep_dir)
    found = _temporaries(sweep_dir)
    wanted = found if cells is None else {c: found[c] for c in cells if c in found}
    removed = 0
    for cell, paths in wanted.items():
        lock = None if held else claim(sweep_dir, cell)
        if not held and lock is None:
            continue
        try:
            for path in paths:
                path.unlink(missing_ok=True)
                removed += 1
        finally:
            if lock is not None:
                lock.release()
    return removed


def check_writable(folder: Path | str, root: Path | str | None = None) -> None:
    """Raise :class:`OSError` unless files can be created in ``folder`` (or where it would go).

    Walks up to the nearest existing ancestor (the folder itself if it exists), which
    must be a folder, and creates and removes a hidden file in it. With ``root`` (a
    folder that contains ``folder``), the walk stops there and ``root`` is created if
    missing, so the probe never touches anything outside ``root``. Permission bits are
    not consulted: they do not stop root, while a read-only mount or an immutable
    folder stops everyone; trying is the only test that answers for this process.
    Nothing is left behind, and no folder but ``root`` is created.
    """
    folder = Path(folder).absolute()
    top = None if root is None else Path(root).absolute()
    if top is not None:
        top.mkdir(parents=True, exist_ok=True)
    existing = folder
    while not existing.exists() and existing != existing.parent and existing != top:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder, is in the way",
                                 str(existing))
    fd, probe = tempfile.mkstemp(prefix=".helios-write-probe-", dir=existing)
    os.close(fd)
    os.unlink(probe)


def check_output_dirs(cells: Iterable[object]) -> None:
    """Check that every cell's results can be written, before any cell runs.

    Probes (see :func:`check_writable`) each ``<output_dir>/<sweep>`` and its existing
    subfolders (tables, claims, Hydra's record), and ``<output_dir>/placement_cache``,
    never anything outside ``output_dir`` (which is created if missing).

    Raises
    ------
    ConfigError
        ``output_dir=<value>: a folder this process can write to (<why not>)``.
    """
    from helios.errors import ConfigError

    seen: set[Path] = set()
    places = {(cfg.output_dir, cfg.sweep) for cfg in cells}  # type: ignore[attr-defined]
    for output_dir, sweep in sorted(places):
        root = Path(output_dir)
        sweep_dir = root / sweep
        folders = [sweep_dir, root / "placement_cache"]
        if sweep_dir.is_dir():
            folders += sorted(p for p in sweep_dir.iterdir() if p.is_dir())
        for folder in folders:
            if folder in seen:
                continue
            seen.add(folder)
            try:
                check_writable(folder, root)
            except OSError as exc:
                where = exc.filename or folder
                raise ConfigError("output_dir", output_dir,
                                  f"a folder this process can write to ({where}: "
                                  f"{exc.strerror or exc})") from None
