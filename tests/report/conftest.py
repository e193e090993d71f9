"""Fixtures of the report's tests: synthetic GPU and CPU runs, and one real run per session."""

from __future__ import annotations

import pytest

import lib

from .fake_runs import build_real_run, make_fake_run


@pytest.fixture
def gpu_run(tmp_path):
    return lib.load_run(make_fake_run(tmp_path, gpu=True))


@pytest.fixture
def cpu_run(tmp_path):
    return lib.load_run(make_fake_run(tmp_path, gpu=False))


@pytest.fixture(scope="session")
def real_run_dir(tmp_path_factory):
    return build_real_run(tmp_path_factory)
