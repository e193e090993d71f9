"""``make lab`` for real: JupyterLab starts (also as root, the situation of containers and cloud GPU
hosts), listens on 127.0.0.1 only, and answers only with its token."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_make_lab_starts_on_localhost_with_a_token(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # a private Jupyter runtime/config folder: nothing of the host's Jupyter set-up leaks in or out
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path))
    log = open(tmp_path / "lab.log", "w+")
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"PYTHON={sys.executable}", f"LAB_PORT={port}"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None and proc.poll() is None:
            time.sleep(0.5)
            text = (tmp_path / "lab.log").read_text()
            m = re.search(r"(http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]{16,}))", text)
            url = m and m.group(1)
        text = (tmp_path / "lab.log").read_text()
        assert "Running as root is not recommended" not in text
        assert url, f"no URL with a token (exit {proc.poll()}):\n{text[-3000:]}"
        token = re.search(r"token=([0-9a-f]+)", url).group(1)
        assert int(re.search(r":(\d+)/", url).group(1)) == port
        assert _status(f"http://127.0.0.1:{port}/api/status?token={token}") == 200
        assert _status(f"http://127.0.0.1:{port}/api/status") == 403  # no token, no answer
        import psutil

        listening = {c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, listening
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session make started: make and its jupyter
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
