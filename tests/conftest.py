"""Shared fixtures: a throwaway database and model cache per test."""

from __future__ import annotations

import pytest

from hwlat.profiler.protocol import TimingProtocol

pytest_plugins = ["tests.sshd_fixtures", "tests.pg_fixtures"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Op models and compiled artifacts go to a per-session temp cache, not ~/.cache, and a command
    run without --db writes a temp database, not ./hwlat.db."""
    monkeypatch.setenv("HWLAT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HWLAT_DB", str(tmp_path_factory.getbasetemp() / "default-hwlat.db"))


@pytest.fixture
def quick_protocol() -> TimingProtocol:
    return TimingProtocol.quick()


@pytest.fixture(scope="session")
def family_paths(tmp_path_factory) -> dict:
    """The CNN families outside the zoo (hwlat.zoo.families), exported once per session."""
    from hwlat import zoo

    directory = tmp_path_factory.mktemp("families")
    return {name: zoo.export_family(name, directory / f"{name}.onnx") for name in zoo.FAMILIES}
