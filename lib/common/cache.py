"""On-disk caching helpers: content hashes, atomic writes and manifests that detect corruption.

A cached artifact is ``<dir>/<file>`` plus ``<dir>/manifest.json`` holding the artifact's
sha256; the artifact is trusted only when the hash still matches, so a truncated or corrupt
file (a killed build, a full disk) is rebuilt instead of being loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["new_folder", "sha256_file", "sha256_bytes", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "read_json", "valid_artifact", "write_manifest", "signals_deferred", "remove_partial_writes"]

# atomic_write_bytes writes "<folder>/.<name>.<random>.tmp", then renames it over "<folder>/<name>"
_TMP_SUFFIX = ".tmp"
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, so racy with threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) and ``kill`` (SIGTERM) arriving inside the block are handled when it ends, by the handlers
    in force before it, so writes that belong together land together: a point's samples and its record, or a
    temporary file and its rename (an interrupt between the two left a ``.*.tmp`` behind in a killed sweep).
    Only the main thread can change handlers, so elsewhere, or where a handler was not set from Python, the
    block runs undeferred. SIGKILL cannot be deferred: ``remove_partial_writes`` clears what it leaves."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _DEFERRED}
    if any(h is None for h in previous.values()):
        yield
        return
    caught: list[int] = []
    for s in _DEFERRED:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):  # each signal once, now delivered to the handler restored above
            signal.raise_signal(s)


def remove_partial_writes(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed writer left under ``folder`` (SIGKILL, a power cut: the target
    itself was never replaced, so nothing measured is lost). Call it only where no writer is live, e.g. holding
    the run's lock before a resume. Returns what was removed."""
    removed = []
    for p in sorted(Path(folder).rglob(f".*{_TMP_SUFFIX}")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``; an interrupt during it
    is handled once the file is in place (``signals_deferred``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        _write_then_rename(path, data)


def _write_then_rename(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        # mkstemp makes the file 0600; give it the permissions open() would (0666 minus the umask),
        # so reports and caches stay readable by whoever could read the folder.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write (a full disk) names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def write_manifest(folder: Path, artifact: str, **info: Any) -> dict:
    """Record ``artifact``'s sha256 and size with ``info`` in ``folder/manifest.json`` (atomically)."""
    path = folder / artifact
    manifest = {"artifact": artifact, "sha256": sha256_file(path), "bytes": path.stat().st_size, **info}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def valid_artifact(folder: Path, artifact: str) -> tuple[dict | None, str]:
    """(manifest, "") when ``folder/artifact`` exists and matches its manifest, else (None, why not)."""
    path, mpath = folder / artifact, folder / "manifest.json"
    if not path.exists():
        return None, "not built yet"
    if not mpath.exists():
        return None, f"{path} has no manifest (an interrupted build?)"
    try:
        manifest = read_json(mpath)
    except (OSError, ValueError) as e:
        return None, f"{mpath} is unreadable: {e}"
    if not isinstance(manifest, dict):
        return None, f"{mpath} is not a manifest (a JSON object), got {type(manifest).__name__}"
    if manifest.get("bytes") != path.stat().st_size or manifest.get("sha256") != sha256_file(path):
        return None, f"{path} does not match its recorded sha256 (truncated or corrupt)"
    return manifest, ""


def new_folder(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name-2``, ``name-3``... if taken: never an existing folder
    (two runs started within the same second get different folders)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        folder = parent / (name if k == 1 else f"{name}-{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    from .errors import BenchbookError

    raise BenchbookError(f"could not create a new folder named {name} under {parent}")


# What benchbook writes under CACHE_DIR (ONNX exports, TensorRT engines and timing caches, the ORT TensorRT EP's
# caches, BatchNorm calibration of random weights, lib.config.models): clean_cache deletes a folder only when it holds nothing else, so a mistyped CACHE_DIR=~ or CACHE_DIR=.
# is refused instead of deleted.
CACHE_ENTRIES = ("onnx", "trt", "ort-trt", "calibration")


def clean_cache(cache_dir: str, log=print) -> None:
    """Delete the cache folder ``cache_dir`` after checking that it is one: not empty, not a filesystem root,
    the home folder, the repository or a folder above it, and holding only ``CACHE_ENTRIES``."""
    import shutil

    from .errors import ConfigError

    text = str(cache_dir or "").strip()
    if not text:
        raise ConfigError("CACHE_DIR is empty; give the cache folder to delete (default: build)")
    path = Path(text).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    protected = {Path(path.anchor), Path.home().resolve(), repo, *repo.parents}
    if path in protected:
        raise ConfigError(f"CACHE_DIR={text!r} is {path}: a filesystem root, the home folder or a folder holding "
                          f"the repository; refusing to delete it (give the cache folder, e.g. CACHE_DIR=build)")
    if not path.exists():
        log(f"[clean-cache] {path} does not exist: nothing to delete")
        return
    if not path.is_dir():
        raise ConfigError(f"CACHE_DIR={text!r} is {path}, a file, not a cache folder; refusing to delete it")
    other = sorted(p.name for p in path.iterdir() if p.name not in CACHE_ENTRIES)
    if other:
        raise ConfigError(f"CACHE_DIR={text!r} ({path}) holds {', '.join(other[:5])}"
                          f"{' …' if len(other) > 5 else ''}, which benchbook does not write there (a cache folder "
                          f"holds only {', '.join(CACHE_ENTRIES)}); refusing to delete it")
    shutil.rmtree(path)
    log(f"[clean-cache] deleted {path}")
