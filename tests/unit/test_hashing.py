"""Golden-vector tests for proxy.topology.hashing (vectors come from a real PostgreSQL 15)."""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from pathlib import Path

import pytest

from proxy.topology.hashing import (
    HASH_PARTITION_SEED,
    bucket_for_untyped,
    bucket_of,
    hash_any_extended,
    hash_combine64,
    hash_int,
    hash_text,
    hash_uint32_extended,
    hash_uuid,
    hash_value,
    normalize_type_name,
)

VECTORS_PATH = Path(__file__).resolve().parents[1] / "cases" / "hash_vectors.csv"
INT_TYPES = {"int2", "int4", "int8"}


def _load_vectors() -> list[dict[str, str]]:
    text = VECTORS_PATH.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO("".join(lines[start:]), newline="")))


VECTORS = _load_vectors()


def _typed(row: dict[str, str]) -> object:
    if row["type"] in INT_TYPES:
        return int(row["value"])
    if row["type"] == "uuid":
        return uuid.UUID(row["value"])
    return row["value"]


def _id(row: dict[str, str]) -> str:
    return f"{row['type']}:{row['value'][:16]!r}%{row['modulus']}"


def test_vector_file_coverage() -> None:
    assert len(VECTORS) >= 300
    types = Counter(row["type"] for row in VECTORS)
    assert set(types) == {"int2", "int4", "int8", "text", "varchar", "uuid"}
    moduli = {int(row["modulus"]) for row in VECTORS}
    assert {1, 2, 3, 8, 64, 1024} <= moduli
    ints8 = {int(r["value"]) for r in VECTORS if r["type"] == "int8"}
    assert {-(2**63), 2**63 - 1, 0} <= ints8
    texts = {r["value"] for r in VECTORS if r["type"] == "text"}
    # Every byte length 0..40 (all lookup3 tail cases, 0-3 full 12-byte rounds).
    assert set(range(41)) <= {len(t.encode()) for t in texts}
    assert "" in texts
    assert any(not t.isascii() for t in texts)


@pytest.mark.parametrize("row", VECTORS, ids=_id)
def test_golden_vector(row: dict[str, str]) -> None:
    value = _typed(row)
    assert hash_value(value, row["type"]) == int(row["hash"])
    assert bucket_of(value, row["type"], int(row["modulus"])) == int(row["remainder"])


def test_all_vectors_match_summary() -> None:
    mismatches = [
        row
        for row in VECTORS
        if bucket_of(_typed(row), row["type"], int(row["modulus"])) != int(row["remainder"])
    ]
    assert mismatches == []


def test_untyped_matches_golden() -> None:
    for row in VECTORS:
        kind = row["type"]
        if kind == "varchar":
            continue
        value = _typed(row)
        assert bucket_for_untyped(value, int(row["modulus"])) == int(row["remainder"])


def test_int_widths_hash_identically_in_postgres_vectors() -> None:
    # The same number hashed by PG as int2, int4 and int8 gives the same hash.
    by_value: dict[int, set[int]] = {}
    for row in VECTORS:
        if row["type"] in INT_TYPES:
            by_value.setdefault(int(row["value"]), set()).add(int(row["hash"]))
    shared = [v for v in by_value if -(2**15) <= v < 2**15]
    assert len(shared) > 10
    for hashes in by_value.values():
        assert len(hashes) == 1


@pytest.mark.parametrize(
    "value", [0, 1, -1, 127, -128, 32767, -32768, 2**31 - 1, -(2**31), 123456, -654321]
)
def test_int_kinds_agree(value: int) -> None:
    kinds = [
        k
        for k, bits in (("int2", 16), ("int4", 32), ("int8", 64))
        if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
    ]
    assert len({hash_int(value, k) for k in kinds}) == 1


def test_int_range_checks() -> None:
    with pytest.raises(OverflowError):
        hash_int(2**15, "int2")
    with pytest.raises(OverflowError):
        hash_int(-(2**31) - 1, "int4")
    with pytest.raises(OverflowError):
        hash_int(2**63, "int8")
    with pytest.raises(OverflowError):
        bucket_for_untyped(-(2**63) - 1, 8)
    with pytest.raises(ValueError):
        hash_int(1, "int16")
    with pytest.raises(TypeError):
        hash_int(True, "int8")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bucket_for_untyped(1.5, 8)


def test_type_names_and_inputs() -> None:
    for name in ("smallint", "int2", "INTEGER", "int", "int4", "bigint", "int8", "pg_catalog.int8"):
        assert bucket_of(12345, name, 64) == bucket_of(12345, "int8", 64)
    assert bucket_of("12345", "integer", 64) == bucket_of(12345, "int8", 64)
    assert bucket_of(" -7 ", "bigint", 1024) == bucket_of(-7, "bigint", 1024)
    for name in ("text", "varchar", "character varying", "VARCHAR(20)", "character  varying(5)"):
        assert normalize_type_name(name) == "text"
        assert bucket_of("日本語", name, 64) == bucket_of("日本語", "text", 64)
    with pytest.raises(ValueError):
        normalize_type_name("char(10)")
    with pytest.raises(ValueError):
        bucket_of("12x", "int4", 8)
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert hash_uuid(u) == hash_uuid(str(u)) == hash_uuid(u.bytes) == hash_value(u, "uuid")
    assert hash_text("é") == hash_text("é".encode())
    with pytest.raises(ValueError):
        bucket_of(1, "int8", 0)
    with pytest.raises(ValueError):
        hash_uuid(b"short")


def test_primitives() -> None:
    # hash_uint32_extended(k) is hash_any_extended over k's 4 little-endian bytes.
    for k in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
        for seed in (0, 1, HASH_PARTITION_SEED):
            assert hash_uint32_extended(k, seed) == hash_any_extended(k.to_bytes(4, "little"), seed)
    # Long inputs bypass the per-length state cache; they must still be consistent.
    long = "x" * 300
    assert hash_text(long) == hash_any_extended(long.encode(), HASH_PARTITION_SEED)
    assert hash_combine64(0, 5) == 5 + 0x49A0F4DD15E5A8E3
    assert bucket_of(7, "int8", 1) == 0
