"""Merging command tags and transaction status from several shards."""

import pytest

from proxy.exec.scatter import merge_status, merge_tags


@pytest.mark.parametrize(
    ("tags", "merged"),
    [
        ([b"SELECT 3", b"SELECT 4"], b"SELECT 7"),
        ([b"INSERT 0 1", b"INSERT 0 2", b"INSERT 0 0"], b"INSERT 0 3"),
        ([b"UPDATE 0", b"UPDATE 5"], b"UPDATE 5"),
        ([b"DELETE 2", b"DELETE 2"], b"DELETE 4"),
        ([b"COPY 10", b"COPY 11"], b"COPY 21"),
        ([b"CREATE TABLE", b"CREATE TABLE"], b"CREATE TABLE"),
        ([b"BEGIN", b"BEGIN"], b"BEGIN"),
        ([b"SELECT 1"], b"SELECT 1"),
        ([b"TRUNCATE TABLE", b"TRUNCATE TABLE"], b"TRUNCATE TABLE"),
    ],
)
def test_merge_tags(tags: list[bytes], merged: bytes) -> None:
    assert merge_tags(tags) == merged


@pytest.mark.parametrize(
    ("statuses", "merged"),
    [
        ([b"I", b"I"], b"I"),
        ([b"I", b"T"], b"T"),
        ([b"T", b"E"], b"E"),
        ([b"E", b"I"], b"E"),
    ],
)
def test_merge_status(statuses: list[bytes], merged: bytes) -> None:
    assert merge_status(statuses) == merged
