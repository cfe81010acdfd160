"""Client prepared statements mapped onto pooled server connections, and SQL splitting.

In transaction mode a client's named statement may be needed on any server connection. Each
statement gets a server-side name derived from its text and parameter types, so the name
never collides between clients (equal names mean equal statements, which may be shared), and
the session (re)prepares it on whichever server it is given.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from proxy.frontend.routing import is_read
from proxy.frontend.settings import (
    Savepoint,
    SettingChange,
    parse_tracked,
    reset_target,
    session_only_feature,
    skip_token,
)
from proxy.wire.messages import cstr, read_cstr


@dataclass(frozen=True, slots=True)
class Statement:
    server_name: str
    parse_body: bytes  # Parse message body carrying server_name, ready to send
    query: str
    change: SettingChange | Savepoint | None  # the setting or savepoint it moves, if any
    session_feature: str | None  # a session-scoped feature it uses, if any
    reset: str | None = None  # the setting it RESETs ("" for all), see settings.reset_target
    param_types: tuple[int, ...] = ()  # parameter type OIDs the client declared (0: unspecified)
    read: bool = False  # a read (SELECT, SHOW, ...): labels its requests in the metrics


class StatementCache:
    """Statements by (query text, parameter types) bytes, shared by all sessions; bounded."""

    def __init__(self, capacity: int = 10000) -> None:
        self.capacity = capacity  # 0 (or less): nothing is kept
        self._items: dict[bytes, Statement] = {}

    def from_parse(self, body: bytes) -> tuple[str, Statement]:
        """Decode a Parse body into (client name, shared Statement)."""
        name, pos = read_cstr(body, 0)
        key = body[pos:]
        stmt = self._items.get(key)
        if stmt is None:
            query, end = read_cstr(body, pos)
            digest = hashlib.blake2b(key, digest_size=12).hexdigest()
            server_name = f"sw_{digest}"
            stmt = Statement(server_name, cstr(server_name) + key, query, parse_tracked(query),
                             session_only_feature(query), reset_target(query),
                             _param_types(body, end), is_read(query))
            if self.capacity <= 0:
                return name, stmt
            if len(self._items) >= self.capacity:
                self._items.pop(next(iter(self._items)))
            self._items[key] = stmt
        return name, stmt


def _param_types(body: bytes, pos: int) -> tuple[int, ...]:
    """The parameter type OIDs after a Parse body's query text (empty if malformed)."""
    if pos + 2 > len(body):
        return ()
    count = int.from_bytes(body[pos:pos + 2], "big", signed=True)
    if count <= 0 or pos + 2 + 4 * count > len(body):
        return ()
    return struct.unpack_from(f"!{count}I", body, pos + 2)


# Where a split point, quoted text or a comment may start.
_SPLIT_SPECIAL = re.compile(r"""[;'"$]|--|/\*""")


def split_statements(sql: str) -> list[str]:
    """Split a multi-statement string on top-level semicolons, stepping over quoted text
    ('', E'' with backslash escapes, "", $tag$) and comments (block comments nest)."""
    if ";" not in sql:
        return [sql]
    out: list[str] = []
    start = pos = 0
    search = _SPLIT_SPECIAL.search
    while (match := search(sql, pos)) is not None:
        i = match.start()
        if sql[i] == ";":
            part = sql[start:i]
            if part.strip():
                out.append(part)
            start = pos = i + 1
        else:
            pos = skip_token(sql, i)
    if sql[start:].strip():
        out.append(sql[start:])
    return out
