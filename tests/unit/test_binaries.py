from __future__ import annotations

from pathlib import Path

import pytest

from localkube import binaries


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return tmp_path / "taskpod" / "bin"


def _fail_build(*_: object) -> None:
    raise AssertionError("must not build")


def test_cache_is_keyed_by_name_and_version(cache: Path) -> None:
    assert binaries.path("etcd") == cache / f"etcd-{binaries.ETCD_VERSION}"
    assert binaries.path("kube-apiserver") == cache / f"kube-apiserver-{binaries.KUBERNETES_VERSION}"


def test_a_cached_binary_is_not_rebuilt(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir(parents=True)
    (cache / f"helm-{binaries.HELM_VERSION}").write_text("#!/bin/sh\n")
    monkeypatch.setattr(binaries, "_build", _fail_build)
    assert binaries.ensure("helm") == cache / f"helm-{binaries.HELM_VERSION}"


def test_kubebuilder_assets_win_over_the_cache(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "kube-apiserver").write_text("#!/bin/sh\n")
    (assets / "kube-apiserver").chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setattr(binaries, "_build", _fail_build)
    assert binaries.ensure("kube-apiserver") == assets / "kube-apiserver"
    # what the assets folder lacks still comes from the cache
    assert binaries.path("kube-scheduler") == cache / f"kube-scheduler-{binaries.KUBERNETES_VERSION}"


def test_a_missing_binary_is_built_into_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def fake_build(component: binaries.Component, target: Path) -> None:
        built.append(component.name)
        target.write_text("binary")

    monkeypatch.setattr(binaries, "_build", fake_build)
    assert binaries.ensure("kwok").read_text() == "binary"
    assert binaries.ensure("kwok").read_text() == "binary"
    assert built == ["kwok"]


def test_kubernetes_binaries_are_stamped_with_their_version() -> None:
    flags = binaries.COMPONENTS["kube-apiserver"].ldflags
    assert f"version.gitVersion={binaries.KUBERNETES_VERSION}" in flags
    assert "version.gitMinor=36" in flags
