"""lib.common.cache: hashes, atomic writes (all or nothing, no temporary files left, usual permissions) and
manifests that catch a missing, truncated or corrupt artifact."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from lib.common.cache import (atomic_write_bytes, atomic_write_json, atomic_write_text, read_json,
                              remove_partial_writes, sha256_bytes, sha256_file, signals_deferred, valid_artifact,
                              write_manifest)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_hashes(tmp_path):
    data = os.urandom(100_003)
    (tmp_path / "f").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == expected
    assert sha256_file(tmp_path / "f") == expected
    assert sha256_file(tmp_path / "f", chunk=7) == expected  # the chunked read covers every byte


def test_atomic_write_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    atomic_write_text(path, "text ✓")
    assert path.read_text() == "text ✓"
    assert _leftovers(path.parent) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")

    class Boom:  # not bytes: the write itself raises, after the temporary file exists
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(path, Boom())
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_write_is_handled_once_the_file_is_in_place(tmp_path, monkeypatch, signum):
    """Ctrl-C or kill arriving mid-write (a real signal, sent to this process from inside fsync) is handled by the
    handler in force, after the rename: a killed sweep left a half-written ``.*.tmp`` beside its points."""
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    real_fsync = os.fsync

    def fsync_then_signal(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signum)

    def handler(got, frame):
        assert path.read_text() == "new" and _leftovers(tmp_path) == []  # handled only once the file is in place
        raise KeyboardInterrupt

    previous = signal.signal(signum, handler)
    try:
        monkeypatch.setattr(os, "fsync", fsync_then_signal)
        with pytest.raises(KeyboardInterrupt):
            atomic_write_text(path, "new")
        monkeypatch.undo()
        assert signal.getsignal(signum) is handler  # the handler in force before the write is back
    finally:
        signal.signal(signum, previous)
    assert path.read_text() == "new" and _leftovers(tmp_path) == []


def test_signals_deferred_delivers_each_signal_once_at_the_end():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with signals_deferred():
            with signals_deferred():  # nested: the inner one hands its signal to the outer one
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_remove_partial_writes_removes_only_temporaries(tmp_path):
    (tmp_path / "points").mkdir()
    keep = [tmp_path / "points" / "bs1.json", tmp_path / "points" / "bs1.parquet", tmp_path / ".hidden"]
    gone = [tmp_path / "points" / ".bs1.parquet.k2j9x1.tmp", tmp_path / ".engine.json.abc.tmp"]
    for p in keep + gone:
        p.write_text("x")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_usual_permissions(tmp_path, umask):
    """Like open(): 0666 minus the umask (mkstemp alone would leave reports readable by the owner only)."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        (tmp_path / "plain.html").write_text("")
    finally:
        os.umask(old)
    mode = (tmp_path / "report.html").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain.html").stat().st_mode & 0o777


def test_json_round_trip(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"b": 1, "a": [1.5, None, "s"], "p": Path("/x/y")})
    assert read_json(path) == {"a": [1.5, None, "s"], "b": 1, "p": "/x/y"}
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')  # sorted keys: stable diffs


# --- manifests ------------------------------------------------------------------------------------------
@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "key"
    atomic_write_bytes(folder / "model.onnx", os.urandom(5000))
    manifest = write_manifest(folder, "model.onnx", precision="fp32", export_s=1.5)
    return folder, manifest


def test_manifest_records_hash_size_and_info(artifact):
    folder, manifest = artifact
    data = (folder / "model.onnx").read_bytes()
    assert manifest == {"artifact": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "bytes": 5000,
                        "precision": "fp32", "export_s": 1.5}
    assert read_json(folder / "manifest.json") == manifest
    assert valid_artifact(folder, "model.onnx") == (manifest, "")


def test_missing_artifact(tmp_path):
    assert valid_artifact(tmp_path, "model.onnx") == (None, "not built yet")


def test_missing_manifest(artifact):
    folder, _ = artifact
    (folder / "manifest.json").unlink()
    manifest, why = valid_artifact(folder, "model.onnx")
    assert manifest is None and "no manifest" in why and "model.onnx" in why


def test_truncated_artifact(artifact):
    folder, _ = artifact
    path = folder / "model.onnx"
    path.write_bytes(path.read_bytes()[:1234])
    manifest, why = valid_artifact(folder, "model.onnx")
    assert manifest is None and "truncated or corrupt" in why


def test_corrupt_artifact_of_the_same_size(artifact):
    folder, _ = artifact
    path = folder / "model.onnx"
    data = bytearray(path.read_bytes())
    data[2500] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest, why = valid_artifact(folder, "model.onnx")
    assert manifest is None and "truncated or corrupt" in why


@pytest.mark.parametrize("text, words", [("{not json", "unreadable"), ("", "unreadable"),
                                         ("[1, 2]", "not a manifest"), ('"sha"', "not a manifest"),
                                         ("{}", "truncated or corrupt")])
def test_bad_manifest(artifact, text, words):
    folder, _ = artifact
    (folder / "manifest.json").write_text(text)
    manifest, why = valid_artifact(folder, "model.onnx")
    assert manifest is None and words in why


def test_manifest_written_atomically_beside_the_artifact(artifact):
    folder, manifest = artifact
    assert _leftovers(folder) == []
    assert json.loads((folder / "manifest.json").read_text())["sha256"] == manifest["sha256"]


# --- make clean-cache ---------------------------------------------------------------------------

def test_clean_cache_deletes_only_a_cache_folder(tmp_path):
    from lib.common.cache import clean_cache
    from lib.common.errors import ConfigError

    cache = tmp_path / "build"
    (cache / "onnx" / "tiny").mkdir(parents=True)
    (cache / "trt").mkdir()
    clean_cache(str(cache), log=lambda m: None)
    assert not cache.exists()
    clean_cache(str(cache), log=lambda m: None)  # missing: nothing to do, no error
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ConfigError, match=r"notes\.txt.*refusing"):
        clean_cache(str(tmp_path))
    assert (tmp_path / "notes.txt").exists()
    repo = Path(__file__).resolve().parents[2]
    for bad in ("", "  ", "/", "~", str(repo), str(repo.parent)):
        with pytest.raises(ConfigError, match="CACHE_DIR"):
            clean_cache(bad)
    assert repo.exists()


def test_make_clean_cache_neither_expands_nor_splits_the_value(tmp_path):
    """CACHE_DIR='$(shell touch X)' must not run the shell (make would expand it), and a value with a space is one
    path, not two for rm -rf."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    marker = tmp_path / "EXPANDED"
    keep = tmp_path / "keep"
    keep.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    for value in (f"$(shell touch {marker})", f"{keep} {tmp_path / 'other'}"):
        proc = subprocess.run(["make", "--no-print-directory", "clean-cache", f"CACHE_DIR={value}"], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=120)
        assert not marker.exists(), proc.stderr
        assert keep.exists(), proc.stderr
    proc = subprocess.run(["make", "--no-print-directory", "clean-cache", f"CACHE_DIR={tmp_path}"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "refusing" in proc.stderr and keep.exists()
    proc = subprocess.run(["make", "--no-print-directory", "models", f"MODELS_DIR=$(shell touch {marker})"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert not marker.exists(), proc.stderr
    proc = subprocess.run(["make", "--no-print-directory", "help", f"BACKENDS=$(shell touch {marker})",
                           f"PRECISIONS=$$(touch {marker})"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert not marker.exists(), proc.stderr  # make expanded the first, bash's double quotes ran the second
    assert f"BACKENDS=$(shell touch {marker})" in proc.stdout
