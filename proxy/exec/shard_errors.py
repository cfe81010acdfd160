"""Owns how a shard's error reaches the client: its own fields, the shard named in the detail.

Every multi-shard path (scatter, fanout, merge) reports the first shard error this way, so
the client sees Postgres' SQLSTATE and message and learns which shard said it.
"""

from __future__ import annotations

from proxy.errors import ShardwireError
from proxy.wire import messages as m

__all__ = ["shard_error", "shard_error_message", "with_shard"]


def with_shard(fields: dict[str, str], shard: str) -> dict[str, str]:
    """The ErrorResponse fields with ``on shard "NAME"`` added to the detail."""
    out = dict(fields)
    where = f'on shard "{shard}"'
    out["D"] = f"{out['D']} ({where})" if out.get("D") else f"error {where}"
    return out


def shard_error_message(fields: dict[str, str], shard: str) -> bytes:
    """An ErrorResponse message for the client: the shard's fields, the shard named."""
    body = b"".join(code.encode() + m.cstr(value)
                    for code, value in with_shard(fields, shard).items()) + b"\x00"
    return m.message(m.ERROR_RESPONSE, body)


def shard_error(fields: dict[str, str], shard: str) -> ShardwireError:
    """The same as an exception (for paths that raise)."""
    named = with_shard(fields, shard)
    return ShardwireError(named.get("M", "error"), sqlstate=named.get("C", "XX000"),
                          detail=named["D"], hint=named.get("H"))
