"""`shardwire route` prints the planner's route and reason for operators."""

from pathlib import Path

import pytest

from proxy.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "config" / "example.yaml")


def test_route_single_shard(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "--config", EXAMPLE, "SELECT * FROM users WHERE id = 42"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("route: shard s")
    assert "public.users.id = 42 -> bucket" in out


def test_route_with_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT * FROM orders WHERE user_id = $1"
    assert main(["route", "--config", EXAMPLE, "-p", "42", sql]) == 0
    out = capsys.readouterr().out
    assert "public.orders.user_id" in out and "-> bucket" in out


def test_route_rejected_statement_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "--config", EXAMPLE, "UPDATE users SET id = 7 WHERE id = 1"]) == 1
    assert "error 0A000" in capsys.readouterr().out


def test_route_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("database: app\nauth: {method: trust}\nshards: 3\n")
    assert main(["route", "--config", str(bad), "SELECT 1"]) == 2
    assert "shards" in capsys.readouterr().err
