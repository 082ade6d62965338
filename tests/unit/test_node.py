"""The real node's claim on the host: one node per machine, and a dead one's leftovers cleaned first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localkube import node


@pytest.fixture(autouse=True)
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "real-node.json"
    monkeypatch.setattr(node, "RECORD", path)
    return path


def test_the_first_claim_records_the_host_as_it_is(tmp_path: Path, record: Path) -> None:
    taken = node.Node(tmp_path / "a").claim_host(alive=lambda _: False)
    assert json.loads(record.read_text())["directory"] == str(tmp_path / "a")
    assert set(taken.sysctls) == set(node.SYSCTLS)


def test_a_claim_again_keeps_the_first_record(tmp_path: Path, record: Path) -> None:
    """A second start of the same cluster must not take the first run's sysctls for the host's own."""
    record.write_text(
        json.dumps({"directory": str(tmp_path / "a"), "sysctls": {"vm/overcommit_memory": "0"}})
    )
    again = node.Node(tmp_path / "a").claim_host(alive=lambda _: True)
    assert again.sysctls == {"vm/overcommit_memory": "0"}


def test_a_node_of_another_cluster_that_runs_is_refused(tmp_path: Path, record: Path) -> None:
    record.write_text(json.dumps({"directory": str(tmp_path / "other")}))
    with pytest.raises(RuntimeError, match="another cluster runs"):
        node.Node(tmp_path / "a").claim_host(alive=lambda d: d == tmp_path / "other")
    assert json.loads(record.read_text())["directory"] == str(tmp_path / "other")
