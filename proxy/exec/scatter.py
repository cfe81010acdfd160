"""Run one request on several shards and merge their answers in lockstep.

For statements whose result needs no reordering (routing issue §10): a read that streams
each shard's rows in turn, a write fanned out to every shard (reference tables, DDL), a
multi-row INSERT split per shard. Every shard receives the same sequence of protocol requests
(or its own rewritten SQL), so their responses have the same shape and merge message by
message: the first shard's descriptions, every shard's rows, command tags with summed row
counts, one ReadyForQuery. Sorting, aggregates and limits are scatter-gather primitives
(issue 4), not this module's job.

Rows are forwarded as the shards sent them (bytes, not decoded); a shard's rows are relayed
while they arrive, and the shards after it are read only once it is done, their sockets
paused by the connection's inbox limit so memory stays bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from proxy.backend.connection import ServerConnection
from proxy.exec.shard_errors import shard_error_message
from proxy.wire import messages as m

log = logging.getLogger("shardwire.scatter")

# The message that ends the answer to each request type (an ErrorResponse ends any of them
# in the extended protocol; a simple Query always ends with ReadyForQuery).
_TERMINALS: dict[int, frozenset[int]] = {
    m.QUERY: frozenset({m.READY_FOR_QUERY}),
    m.SYNC: frozenset({m.READY_FOR_QUERY}),
    m.PARSE: frozenset({m.PARSE_COMPLETE}),
    m.BIND: frozenset({m.BIND_COMPLETE}),
    m.CLOSE: frozenset({m.CLOSE_COMPLETE}),
    m.DESCRIBE: frozenset({m.ROW_DESCRIPTION, m.NO_DATA}),
    m.EXECUTE: frozenset({m.COMMAND_COMPLETE, m.EMPTY_QUERY, m.PORTAL_SUSPENDED}),
}
# Requests that produce no response of their own.
NO_RESPONSE = frozenset({m.FLUSH, m.COPY_DATA, m.COPY_DONE, m.COPY_FAIL})

_COUNTED_TAGS = (b"SELECT", b"UPDATE", b"DELETE", b"COPY", b"MOVE", b"FETCH", b"MERGE")


def merge_tags(tags: Sequence[bytes]) -> bytes:
    """Combine CommandComplete tags from several shards: row counts add up.

    `INSERT 0 n` keeps its (always zero) OID field; tags without a count (CREATE TABLE,
    BEGIN, ...) are the same on every shard, so the first is returned.
    """
    first = tags[0]
    verb, _, rest = first.rpartition(b" ")
    if not verb or not rest.isdigit():
        return first
    if not (verb.startswith(_COUNTED_TAGS) or verb == b"INSERT 0"):
        return first
    total = 0
    for tag in tags:
        _, _, count = tag.rpartition(b" ")
        total += int(count) if count.isdigit() else 0
    return verb + b" " + str(total).encode()


def merge_status(statuses: Sequence[bytes]) -> bytes:
    """One ReadyForQuery status for several servers: failed beats in-transaction beats idle."""
    if b"E" in statuses:
        return b"E"
    if b"T" in statuses:
        return b"T"
    return b"I"


@dataclass
class ScatterResult:
    """What the client was told, for the session's own bookkeeping."""

    status: bytes = b"I"
    error: dict[str, str] | None = None
    error_shard: str | None = None
    tags: list[bytes] = field(default_factory=list)


Step = tuple[int, tuple[int, ...]]  # (request message type, indexes of the servers sent it)
# Or'ed into a step's message type: a request the proxy added (a Parse of a rewritten
# statement): its answer is read but not relayed; an error in it is still reported.
HIDDEN = 0x100


RowCombiner = Callable[[list[list[bytes]]], list[bytes]]


async def gather(servers: Sequence[ServerConnection], steps: Sequence[Step],
                 write: Callable[[bytes], None], *, forward_ready: bool = True,
                 on_parameter: Callable[[str, str], None] | None = None,
                 combine: RowCombiner | None = None,
                 copy_header: bool = False, replicas: bool = False,
                 limit: int = 0) -> ScatterResult:
    """Read the servers' answers to `steps` and write one merged answer with `write`.

    `steps` lists, in the client's order, each request and the servers it was sent to; they
    make up one unit (a simple Query, or extended messages ending with a Sync that every
    involved server received). The servers must be detached (no sink). A step sent to one
    server is relayed as is; a step sent to several is merged (first server's descriptions,
    every server's rows, summed command tags). On an error the first ErrorResponse is relayed
    with the shard named in its detail and every answer after it up to the Sync is dropped,
    as one Postgres would skip to the Sync.

    `combine`, when given, receives each server's DataRow messages (whole messages, one
    list per server in `targets` order) and returns the rows to send instead: for sums of
    counts, or to put INSERT ... RETURNING rows back in VALUES order. COPY TO STDOUT is
    merged like rows: one CopyOutResponse, every shard's CopyData (with `copy_header`, the
    header line of shards after the first is dropped), one CopyDone.

    `replicas`: the servers hold copies of the same rows (a write to a reference table):
    the answer is the first server's (rows, row count), the others only confirm it.

    `limit`: the client's Execute asked for at most that many rows (each server was sent
    an Execute for all of them): the first `limit` rows are relayed, then PortalSuspended
    if there were more.
    """
    result = ScatterResult()
    failed = [False] * len(servers)
    out: list[bytes] = []

    def emit(data: bytes) -> None:
        out.append(data)
        if len(out) >= 64:
            write(b"".join(out))
            out.clear()

    for request, targets in steps:
        hidden = bool(request & HIDDEN)
        request &= 0xFF
        if request in NO_RESPONSE:
            continue
        terminals = _TERMINALS[request]
        simple = request == m.QUERY
        ends_with_ready = request in (m.QUERY, m.SYNC)
        tags: list[bytes] = []
        statuses: list[bytes] = []
        first_terminal: bytes | None = None
        rows_step = request == m.EXECUTE or request == m.QUERY
        held: list[list[bytes]] | None = [] if combine is not None and rows_step else None
        room = limit if limit and request == m.EXECUTE else -1  # rows still to relay
        more = False
        copy_done: bytes | None = None
        for position, index in enumerate(targets):
            if held is not None:
                held.append([])
            skip_header = copy_header and position > 0
            server = servers[index]
            if failed[index] and not ends_with_ready:
                continue  # that server is skipping to the Sync
            while True:
                mtype, body = await server.recv()
                if mtype == m.NOTICE_RESPONSE or mtype == m.NOTIFICATION_RESPONSE:
                    emit(m.message(mtype, body))
                    continue
                if mtype == m.PARAMETER_STATUS:
                    name, value = m.decode_parameter_status(body)
                    server.params[name] = value
                    if position == 0 and on_parameter is not None:
                        on_parameter(name, value)
                    continue
                if mtype == m.ERROR_RESPONSE:
                    if result.error is None:
                        result.error = m.decode_fields(body)
                        result.error_shard = server.shard
                    failed[index] = True
                    if simple:
                        continue  # ReadyForQuery follows
                    break
                if mtype == m.DATA_ROW:
                    if result.error is None and not (replicas and position > 0):
                        if held is not None:
                            held[-1].append(m.message(mtype, body))
                        elif room == 0:
                            more = True
                        else:
                            room -= 1
                            emit(m.message(mtype, body))
                    continue
                if mtype == m.COPY_DATA:
                    if replicas and position > 0:
                        continue
                    if skip_header:
                        skip_header = False
                    elif result.error is None:
                        emit(m.message(mtype, body))
                    continue
                if mtype == m.COPY_DONE:
                    copy_done = m.message(mtype, body)
                    continue
                if mtype == m.COMMAND_COMPLETE:
                    if not (replicas and position > 0):
                        tags.append(body[:-1])
                    if not simple:
                        break
                    continue
                if mtype == m.READY_FOR_QUERY:
                    server.status = body[:1]
                    statuses.append(body[:1])
                    if ends_with_ready:
                        break
                    continue
                if mtype in terminals:
                    if position == 0:
                        first_terminal = m.message(mtype, body)
                    break
                # RowDescription, ParameterDescription, CopyOutResponse...: the first server's.
                if position == 0 and result.error is None:
                    emit(m.message(mtype, body))
        if result.error is None:
            if held is not None and combine is not None:
                for row in combine(held):
                    emit(row)
            if copy_done is not None:
                emit(copy_done)
            if more:
                emit(m.message(m.PORTAL_SUSPENDED))
            elif tags:
                merged = merge_tags(tags)
                result.tags.append(merged)
                emit(m.message(m.COMMAND_COMPLETE, merged + b"\x00"))
            elif first_terminal is not None and not hidden:
                emit(first_terminal)
        if ends_with_ready:
            if result.error is not None and result.error_shard is not None:
                emit(shard_error_message(result.error, result.error_shard))
            result.status = merge_status(statuses)
            if forward_ready:
                emit(m.ready_for_query(result.status))
    if out:
        write(b"".join(out))
    return result



