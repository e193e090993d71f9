"""The state of a run folder, checked rather than assumed: who is working in it (locks), what it was
run on (a fingerprint compared on resume) and which measured points on disk can be trusted.

* ``run_lock(run_dir)``: held by the one ``make report`` working in a run folder for its whole life;
  a second one is refused, naming the live process (pid, host, command). ``lock_holder`` tells whether
  a run is alive. Locks are ``fcntl.flock`` on a file: the kernel drops them when the holder dies, so a
  killed run never leaves a stale lock behind.
* ``device_lock(device)``: held around one backend's measurement; measurements on one device never
  overlap, whatever make's ``-j`` (a second backend waits, saying for whom).
* ``file_lock(path)``: a blocking lock (the ONNX export: two runs of one model wait for one export).
* ``fingerprint`` / ``check_fingerprint``: the model's files, weights, library versions and
  run-defining parameters, written at plan time (``fingerprint.json``) and compared on resume.
* ``valid_points(points_dir)``: the point files that are readable and complete; a corrupt one is set
  aside (renamed ``<name>.corrupt-<n>``, kept for inspection) so the point is measured again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from .cache import atomic_write_json, sha256_file
from .errors import BenchbookError, ConfigError

__all__ = ["run_lock", "acquire_run_lock", "user_command", "lock_holder", "device_lock", "file_lock", "RunBusy", "fingerprint", "write_fingerprint",
           "check_fingerprint", "read_point", "valid_points", "read_prior_ticks", "set_aside", "CorruptFile", "read_run_json", "FINGERPRINT_FILE"]

LOCK_FILE = ".run.lock"
FINGERPRINT_FILE = "fingerprint.json"
# Libraries whose version changes what is measured (a resume with another version is another run).
_LIBRARIES = ("torch", "torchvision", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxconverter-common", "tensorrt",
              "tensorrt-rtx", "transformers", "numpy")


class RunBusy(BenchbookError):
    """Another live process works in the run folder (its pid, host and command are in the message)."""


class CorruptFile(BenchbookError):
    """A file of a run folder cannot be read as what it should be (its path is in the message)."""


# --- locks -----------------------------------------------------------------------------------------

def _holder_text(info: dict) -> str:
    since = info.get("since")
    when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {when}: {info.get('command', '?')}"


def _read_holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _claim(fd: int, extra: dict | None = None) -> None:
    """Write who holds the lock into the lock file (read by whoever is refused)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "command": " ".join(sys.argv)[:300], **(extra or {})}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def user_command() -> str:
    """The command the user typed (the outermost ``make`` above this process), for a lock's holder record."""
    try:
        import psutil

        found = None
        for proc in psutil.Process().parents():
            cmd = proc.cmdline()
            if cmd and os.path.basename(cmd[0]) in ("make", "gmake"):
                found = cmd
        if found:
            return " ".join(found)
    except Exception:  # psutil missing or a parent gone: the record is informative only
        pass
    return " ".join(sys.argv)


def lock_holder(run_dir: Path | str) -> dict | None:
    """Who holds ``run_dir``'s lock ({pid, host, since, command}) while a live process works there, else None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire_run_lock(run_dir: Path | str, command: str | None = None) -> int:
    """An fd holding ``run_dir``'s lock (closing it, or the death of every process that inherited it,
    releases the lock); RunBusy naming the live holder when another process has it."""
    run_dir = Path(run_dir)
    fd = _try_lock(run_dir / LOCK_FILE)
    if fd is None:
        info = _read_holder(run_dir / LOCK_FILE)
        raise RunBusy(f"run {run_dir.name} is being run by another process ({_holder_text(info)}); wait for it to "
                      f"finish or stop it, or leave RUN_ID empty for a new run")
    _claim(fd, {"command": command} if command else None)
    return fd


@contextlib.contextmanager
def run_lock(run_dir: Path | str, command: str | None = None):
    """Hold ``run_dir``'s lock for the block (see ``acquire_run_lock``)."""
    fd = acquire_run_lock(run_dir, command)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock_dir() -> Path:
    # One per host, shared by every checkout and REPORTS_DIR: the device is the host's, not a run's.
    return Path(os.environ.get("BENCHBOOK_LOCK_DIR") or tempfile.gettempdir())


def _device_key(device: str) -> str:
    if device == "cuda":  # the GPUs this process sees; index 0 is the one measured
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        return f"cuda-{visible or '0'}"
    return device


@contextlib.contextmanager
def device_lock(device: str, what: str = "", log=print):
    """Hold the host-wide lock of ``device`` for the block; waits (saying for whom) while another backend
    measures on it."""
    path = _lock_dir() / f"benchbook-device-{_device_key(device)}.lock"
    fd = _try_lock(path)
    if fd is None:
        log(f"[make] {what or 'benchmark'}: waiting for device {device}, busy with {_holder_text(_read_holder(path))}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _claim(fd, {"what": what})
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path | str):
    """A blocking exclusive lock on ``path`` for the block (the file is created and left in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- fingerprint of what a run measures --------------------------------------------------------------

def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def fingerprint(cfg, params, run_defining: tuple[str, ...]) -> dict:
    """What makes a run's measurements comparable with each other: the model's files (sha256), the
    weights file's sha256, the measuring libraries' versions and the run-defining parameters."""
    files = {}
    for name in ("config.yaml", "load.py", "model.onnx"):
        p = cfg.folder / name
        if p.is_file():
            files[name] = sha256_file(p)
    if cfg.path.name != "config.yaml" and cfg.path.is_file():
        files[cfg.path.name] = sha256_file(cfg.path)
    weights = params.weights
    return {"model_files": files,
            "weights_sha256": sha256_file(weights) if weights and Path(weights).is_file() else None,
            "libraries": {d: _version(d) for d in _LIBRARIES},
            "python": sys.version.split()[0],
            "params": {k: str(getattr(params, k)) for k in run_defining}}


def write_fingerprint(run_dir: Path, fp: dict) -> None:
    atomic_write_json(Path(run_dir) / FINGERPRINT_FILE, fp)


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for name in sorted(set(old.get("model_files", {})) | set(new.get("model_files", {}))):
        a, b = old.get("model_files", {}).get(name), new.get("model_files", {}).get(name)
        if a != b:
            out.append(f"the model's {name} ({'changed' if a and b else 'added' if b else 'removed'} since the run "
                       f"started)")
    if old.get("weights_sha256") != new.get("weights_sha256"):
        out.append(f"the weights file (sha256 {str(old.get('weights_sha256'))[:12]} there, "
                   f"{str(new.get('weights_sha256'))[:12]} now)")
    for lib in sorted(set(old.get("libraries", {})) | set(new.get("libraries", {}))):
        a, b = old.get("libraries", {}).get(lib, "-"), new.get("libraries", {}).get(lib, "-")
        if a != b:
            out.append(f"{lib} {a} there, {b} now")
    if old.get("python") != new.get("python"):
        out.append(f"Python {old.get('python')} there, {new.get('python')} now")
    for k in sorted(set(old.get("params", {})) | set(new.get("params", {}))):
        a, b = old.get("params", {}).get(k), new.get("params", {}).get(k)
        if a != b:
            out.append(f"{k.upper()}={a!r} there, {b!r} now")
    return out


def check_fingerprint(run_dir: Path, fp: dict) -> None:
    """ConfigError naming every difference when ``fp`` is not the fingerprint the run was started with."""
    path = Path(run_dir) / FINGERPRINT_FILE
    if not path.exists():
        return  # a run made before fingerprints were recorded: its parameters were compared already
    old = read_run_json(path)
    diff = _differences(old if isinstance(old, dict) else {}, fp)
    if diff:
        raise ConfigError(f"RUN_ID={Path(run_dir).name} cannot be resumed: what it measures has changed: "
                          + "; ".join(diff) + ". Its points would not be comparable with new ones; leave RUN_ID "
                          "empty for a new run (or restore what changed)")


# --- files of a run folder ------------------------------------------------------------------------------

def read_run_json(path: Path | str, kind: type = dict):
    """A JSON file of a run folder; CorruptFile naming it when it is not readable JSON of type ``kind``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptFile(f"{path} is corrupt: not UTF-8 text (binary garbage?)") from None
    except ValueError as e:
        raise CorruptFile(f"{path} is corrupt: not valid JSON ({e})") from None
    if not isinstance(obj, kind):
        raise CorruptFile(f"{path} is corrupt: expected a JSON {'object' if kind is dict else kind.__name__}, "
                          f"got {type(obj).__name__}")
    return obj


_POINT_KEYS = ("backend", "precision", "batch", "shape", "status")


def read_point(path: Path | str) -> dict:
    """A point record; CorruptFile naming the file when it is unreadable, incomplete, or an "ok" point
    without its samples (``<point>.parquet``)."""
    path = Path(path)
    rec = read_run_json(path)
    missing = [k for k in _POINT_KEYS if k not in rec]
    if missing:
        raise CorruptFile(f"{path} is not a complete point record (no {', '.join(missing)})")
    if rec["status"] == "ok":  # lib.sweep.bench: characterised (rounds may still be empty), then one entry per round
        if not isinstance(rec.get("rounds"), list):
            raise CorruptFile(f"{path} is not a complete point record (status ok but no rounds list)")
        if rec["rounds"] and not path.with_suffix(".parquet").is_file():
            raise CorruptFile(f"{path} has status ok but its samples {path.with_suffix('.parquet').name} are missing")
    return rec


def set_aside(path: Path) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<n>`` (kept, and no longer taken as a result)."""
    for n in range(1, 1000):
        dest = path.with_name(f"{path.name}.corrupt-{n}")
        if not dest.exists():
            path.rename(dest)
            return dest
    raise BenchbookError(f"cannot set aside {path}: too many corrupt copies beside it")


def valid_points(points_dir: Path | str, log=print) -> set[str]:
    """Names (without .json) of the point files in ``points_dir`` that can be trusted; each corrupt one is
    named, set aside and so measured again."""
    good = set()
    for p in sorted(Path(points_dir).glob("*.json")):
        try:
            read_point(p)
        except CorruptFile as e:
            dest = set_aside(p)
            if p.with_suffix(".parquet").exists():
                set_aside(p.with_suffix(".parquet"))
            log(f"warning: {e}; set aside as {dest.name}, the point is measured again")
            continue
        good.add(p.stem)
    return good


def read_prior_ticks(path: Path, log=print):
    """The sampler ticks an interrupted sweep left (None if none); an unreadable file is set aside, named."""
    if not path.exists():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        dest = set_aside(path)
        log(f"warning: {path} is corrupt ({type(e).__name__}: {str(e)[:200]}); set aside as {dest.name}")
        return None
