"""`shardwire check --connect`: every shard reached, two-phase commit readiness reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from proxy.localpg import LocalPostgres
from tests.integration.conftest import ROOT, base_topology


def test_check_connect_reports_each_shard(shard_clusters: list[LocalPostgres],
                                          tmp_path: Path) -> None:
    topology = base_topology(shard_clusters)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(topology))
    result = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(path),
                             "--connect"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shard s0: ok" in result.stdout and "shard s1: ok" in result.stdout

    down = dict(topology, shards=[dict(topology["shards"][0]),
                                  {"name": "s1", "primary": "postgresql://postgres@127.0.0.1:1/app"}])
    path.write_text(yaml.safe_dump(down))
    result = subprocess.run([sys.executable, "-m", "proxy", "check", "--config", str(path),
                             "--connect"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=False)
    assert result.returncode == 1
    assert "shard s1: not reachable" in result.stdout
