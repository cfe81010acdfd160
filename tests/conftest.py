"""Top-level fixtures: throwaway local PostgreSQL clusters (see proxy.localpg).

PostgreSQL is a hard requirement of the suite: when it is missing the fixtures fail
(with installation instructions); they never skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.localpg import LocalPostgres, PostgresNotFound, find_bindir

PgFactory = Callable[..., LocalPostgres]

SHARD_NAMES = ("s0", "s1")
SHARD_DATABASE = "app"
SUPERUSER_PASSWORD = "postgres"


@pytest.fixture(scope="session")
def pg_bindir() -> Path:
    try:
        return find_bindir()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def pg_base_dir() -> Iterator[Path]:
    # Short path (unix socket length limit) that the postgres user can traverse when
    # we run as root.
    path = Path(tempfile.mkdtemp(prefix="shardwire-pg-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_factory(pg_bindir: Path, pg_base_dir: Path) -> Iterator[PgFactory]:
    """``pg_factory(name, **kwargs)`` starts a LocalPostgres cluster, destroyed at session end."""
    clusters: list[LocalPostgres] = []

    def make(name: str, **kwargs: Any) -> LocalPostgres:
        kwargs.setdefault("bindir", pg_bindir)
        cluster = LocalPostgres(pg_base_dir, name, **kwargs)
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(clusters):
            cluster.destroy()


@pytest.fixture(scope="session")
def shard_clusters(pg_factory: PgFactory) -> list[LocalPostgres]:
    """Two started clusters, s0 and s1 (scram-sha-256, password "postgres"), each with
    a database ``app``."""
    clusters = []
    for name in SHARD_NAMES:
        cluster = pg_factory(name, auth="scram-sha-256", superuser_password=SUPERUSER_PASSWORD)
        cluster.create_database(SHARD_DATABASE)
        clusters.append(cluster)
    return clusters
