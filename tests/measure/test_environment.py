"""lib.measure.environment: library versions come from the core list plus what the backends register."""

from __future__ import annotations

import importlib.metadata as md

import lib.measure.environment as environment


def test_registered_libraries_are_recorded(monkeypatch):
    monkeypatch.setattr(environment, "_BACKEND_MODULES", {})
    assert "pytest" not in environment.collect_environment()["libraries"]
    environment.register_libraries({"pytest": ("pytest",)})
    environment.register_libraries({"pytest": ("not-this-one",)})  # the first declaration of a module stays
    libs = environment.collect_environment()["libraries"]
    assert libs["pytest"].startswith(md.version("pytest")) and "not-this-one" not in libs
    assert list(libs)[0] == "pytest"  # the backends' libraries first, then the core ones
    assert {"numpy", "onnx"} <= set(libs)
