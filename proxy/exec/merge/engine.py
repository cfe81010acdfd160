"""Owns executing a :class:`~proxy.sql.merge.MergePlan` on detached shard servers.

Each shard runs the plan's ``shard_sql`` as an unnamed portal fetched in batches
(``Execute`` with a row limit, then ``Flush``), so a sorted merge holds at most one batch
per shard and stops asking once LIMIT is met; the portal goes at the final ``Sync``.
Shard 0 also describes the client's own statement, so the client gets the RowDescription
one Postgres would send.

Rows that need no recomputation are forwarded as the shards' bytes (helper columns cut);
aggregates are decoded, combined with Postgres' rules and encoded in the format the
client asked for (:mod:`proxy.exec.merge.values`).
"""

from __future__ import annotations

import heapq
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.backend.connection import ServerConnection
from proxy.errors import FeatureNotSupported, ShardwireError
from proxy.exec.merge import values as v
from proxy.exec.shard_errors import shard_error_message
from proxy.sql.merge import EXPR, AggSpec, Bound, MergePlan, SortKey
from proxy.sql.params import decode_binary_array
from proxy.wire import messages as m

BATCH = 1000  # rows per Execute
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class ShardError(Exception):
    """A shard answered with an ErrorResponse (its fields, and the shard's name)."""

    def __init__(self, fields: dict[str, str], shard: str) -> None:
        super().__init__(fields.get("M", "error"))
        self.fields = fields
        self.shard = shard

    def message(self) -> bytes:
        return shard_error_message(self.fields, self.shard)


@dataclass
class Column:
    """A column of a RowDescription: the raw 18-byte field tail and its parts we use."""

    name: bytes
    rest: bytearray  # table oid, attnum, type oid, typlen, typmod, format (18 bytes)

    @property
    def oid(self) -> int:
        return int.from_bytes(self.rest[6:10], "big")

    @property
    def binary(self) -> bool:
        return self.rest[16:18] == b"\x00\x01"


def parse_row_description(body: bytes) -> list[Column]:
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    out = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        out.append(Column(body[pos:end], bytearray(body[end + 1:end + 19])))
        pos = end + 19
    return out


def row_description(columns: Sequence[Column]) -> bytes:
    body = _I16.pack(len(columns)) + b"".join(c.name + b"\x00" + bytes(c.rest)
                                              for c in columns)
    return m.message(m.ROW_DESCRIPTION, body)


def split_row(body: bytes) -> list[bytes | None]:
    """A DataRow body's column values (None for NULL)."""
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(count):
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + length])
            pos += length
    return out


def data_row(values: Sequence[bytes | None]) -> bytes:
    return m.data_row(values)


class Stream:
    """One shard's portal, read in batches."""

    def __init__(self, server: ServerConnection, portal: str = "") -> None:
        self.server = server
        self.portal = portal
        self.rows: deque[bytes] = deque()
        self.done = False
        self.description: list[Column] | None = None
        self.tag: bytes | None = None

    async def read(self, *, until_rows: bool) -> None:
        """Read answers up to the end of the current Execute (or the first description)."""
        server = self.server
        while True:
            mtype, body = await server.recv()
            if mtype == m.DATA_ROW:
                self.rows.append(body)
            elif mtype == m.PORTAL_SUSPENDED:
                return
            elif mtype == m.COMMAND_COMPLETE:
                self.tag = body[:-1]
                self.done = True
                return
            elif mtype == m.ROW_DESCRIPTION:
                self.description = parse_row_description(body)
                if not until_rows:
                    return
            elif mtype == m.ERROR_RESPONSE:
                raise ShardError(m.decode_fields(body), server.shard)
            elif mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(body)
                server.params[name] = value
            # ParseComplete, BindComplete, ParameterDescription, notices: nothing to do

    async def next_row(self) -> bytes | None:
        if not self.rows:
            if self.done:
                return None
            self.server.send(_execute_flush(self.portal))
            await self.read(until_rows=True)
            if not self.rows:
                return None
        return self.rows.popleft()


def _execute_flush(portal: str = "") -> bytes:
    return m.message(m.EXECUTE, m.cstr(portal) + _I32.pack(BATCH)) + m.message(m.FLUSH)


@dataclass
class Request:
    """What the client asked: parameters (as its Bind carried them) and result formats."""

    sql: str  # the client's statement, described on shard 0
    param_types: bytes = b"\x00\x00"  # the Parse's parameter type section
    params: bytes = b"\x00\x00\x00\x00"  # the Bind's parameter format + value sections
    values: Sequence[object | None] = ()  # decoded, for LIMIT/OFFSET parameters
    formats: tuple[int, ...] = ()  # the Bind's result format codes (empty: all text)
    max_rows: int = 0  # the client's Execute row limit


@dataclass
class Context:
    """The session settings that decide how values compare and read as text."""

    collation: str = "C"
    time_zone: str = "UTC"
    extra_float_digits: int = 1
    date_style: str = "ISO, MDY"
    interval_style: str = "postgres"

    def codec(self, oid: int) -> v.Codec:
        return v.codec_for(oid, collation=self.collation, tz=self.time_zone,
                           extra_float_digits=self.extra_float_digits)

    def check_text(self, oid: int) -> None:
        """Computed values are written as Postgres writes them in ISO DateStyle and the
        default IntervalStyle; other styles are refused rather than answered differently."""
        if oid in _DATE_TYPES and not self.date_style.upper().startswith("ISO"):
            raise FeatureNotSupported(
                f"a merged date/time result in DateStyle {self.date_style!r} is not "
                "supported", hint="SET DateStyle = ISO, or ask for binary results")
        if oid == v.INTERVAL and self.interval_style != "postgres":
            raise FeatureNotSupported(
                f"a merged interval result in IntervalStyle {self.interval_style!r} is not "
                "supported", hint="SET IntervalStyle = postgres, or ask for binary results")


_DATE_TYPES = frozenset({v.DATE, v.TIME, v.TIMESTAMP, v.TIMESTAMPTZ})


def _format_for(formats: tuple[int, ...], i: int) -> int:
    if not formats:
        return 0
    if len(formats) == 1:
        return formats[0]
    return formats[i] if i < len(formats) else 0


async def run(plan: MergePlan, servers: Sequence[ServerConnection], req: Request,
              write: Callable[[bytes], None], *, describe: bool, ctx: Context,
              max_groups: int) -> tuple[int, bool]:
    """Run the plan once; write RowDescription (when `describe`), rows, CommandComplete (or
    PortalSuspended at the client's row limit). Returns (rows sent, suspended). Raises
    ShardError / ShardwireError after bringing every server back to ReadyForQuery."""
    merge = Merge(plan, servers, req, ctx, max_groups)
    try:
        await merge.start(write, describe=describe)
        return await merge.fetch(req.max_rows, write)
    finally:
        await merge.sync()


class Merge:
    """One merged result, resumable: :meth:`start` opens a portal on every shard,
    :meth:`fetch` writes the next rows (a cursor calls it once per client Execute), and
    :meth:`sync` ends each shard's batch so the servers can run other statements (inside a
    transaction a named portal survives that, and the cursor can go on)."""

    def __init__(self, plan: MergePlan, servers: Sequence[ServerConnection], req: Request,
                 ctx: Context, max_groups: int, *, portal: str = "") -> None:
        self.plan = plan
        self.req = req
        self.ctx = ctx
        self.max_groups = max_groups
        self.portal = portal
        self.streams = [Stream(s, portal) for s in servers]
        self.original: list[Column] = []
        self.rows: Any = None  # async iterator of DataRow messages
        self.sent = 0
        self.done = False

    async def start(self, write: Callable[[bytes], None], *, describe: bool) -> None:
        plan, req, streams = self.plan, self.req, self.streams
        original = self.original = await _describe(streams[0].server, req)
        width = len(original)
        # partials of aggregates and the sort-key helpers come in binary (no DateStyle, no
        # extra_float_digits, no parsing of text); forwarded columns in the client's format
        if plan.aggregate:
            shard_formats = [1]
        else:
            shard_formats = ([_format_for(req.formats, i) for i in range(width)]
                             + [1] * plan.helpers)
        portal = m.cstr(self.portal)
        bind = (portal + m.cstr("") + req.params + _I16.pack(len(shard_formats))
                + b"".join(_I16.pack(f) for f in shard_formats))
        request = (m.message(m.PARSE, m.cstr("") + m.cstr(plan.shard_sql) + req.param_types)
                   + m.message(m.BIND, bind) + m.message(m.DESCRIBE, b"P" + portal)
                   + _execute_flush(self.portal))
        for st in streams:
            st.server.send(request)
        for st in streams:
            await st.read(until_rows=True)
        shard_desc = streams[0].description or []
        for i, col in enumerate(original):
            col.rest[16:18] = _I16.pack(_format_for(req.formats, i))
        if describe:
            write(row_description(original))
        self.rows = self._rows(shard_desc, width)

    def describe(self) -> bytes:
        return row_description(self.original)

    async def _rows(self, shard_desc: list[Column], width: int):  # type: ignore[no-untyped-def]
        plan, req, ctx, streams = self.plan, self.req, self.ctx, self.streams
        limit = _bound(plan.limit, req)
        offset = _bound(plan.offset, req) or 0
        if plan.aggregate:
            groups = await _aggregate(plan, streams, shard_desc, ctx, self.max_groups)
            out = _finish_groups(plan, groups, shard_desc, self.original, ctx)[offset:]
            for row in out if limit is None else out[:limit]:
                yield data_row(row)
            return
        keys = [_key_reader(k, shard_desc, ctx) for k in plan.order]
        source = _merged(streams, keys) if keys else _concat(streams)
        if plan.distinct_on is not None:
            on = [_value_reader(c, shard_desc, ctx) for c in plan.distinct_on]
            source = _distinct_on(source, on)
        elif plan.distinct:
            readers = [_value_reader(c, shard_desc, ctx) for c in range(width)]
            source = _distinct(source, readers, self.max_groups)
        sent = 0
        skipped = 0
        last_key: tuple[Any, ...] | None = None
        async for body in source:
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and sent >= limit:
                if not plan.with_ties or limit == 0:
                    break
                values = split_row(body)
                if tuple(k(values) for k in keys) != last_key:
                    break
            elif plan.with_ties and limit is not None and sent == limit - 1:
                values = split_row(body)
                last_key = tuple(k(values) for k in keys)
            if plan.helpers:
                body = data_row(split_row(body)[:width])[5:]
            sent += 1
            yield m.message(m.DATA_ROW, body)

    async def fetch(self, max_rows: int, write: Callable[[bytes], None]) -> tuple[int, bool]:
        """Write up to `max_rows` rows (0: all), then PortalSuspended if more are left,
        else CommandComplete with the total. Returns (rows written now, suspended)."""
        batch: list[bytes] = []
        count = 0
        rows = self.rows
        if not self.done:
            while not max_rows or count < max_rows:
                try:
                    row = await rows.__anext__()
                except StopAsyncIteration:
                    self.done = True
                    break
                batch.append(row)
                count += 1
                if len(batch) >= 256:
                    _flush(batch, write)
            if max_rows and count >= max_rows and not self.done:
                # one more row decides between PortalSuspended and CommandComplete
                try:
                    peeked = await rows.__anext__()
                except StopAsyncIteration:
                    self.done = True
                else:
                    self.rows = _prepend(peeked, rows)
        _flush(batch, write)
        self.sent += count
        if self.done:
            write(m.command_complete(f"SELECT {self.sent}"))
            return count, False
        write(m.message(m.PORTAL_SUSPENDED))
        return count, True

    async def sync(self) -> None:
        """End each shard's batch (their named portals live on inside a transaction)."""
        for st in self.streams:
            st.server.send(m.SYNC_MSG)
        for st in self.streams:
            await _until_ready(st.server)

    async def close(self) -> None:
        """Close the shard portals of a cursor the client closed."""
        if self.portal:
            close = m.message(m.CLOSE, b"P" + m.cstr(self.portal)) + m.SYNC_MSG
            for st in self.streams:
                st.server.send(close)
            for st in self.streams:
                await _until_ready(st.server)


async def _prepend(first: bytes, rest: Any):  # type: ignore[no-untyped-def]
    yield first
    async for row in rest:
        yield row


async def _until_ready(server: ServerConnection) -> None:
    while True:
        mtype, body = await server.recv()
        if mtype == m.READY_FOR_QUERY:
            server.status = body[:1]
            return


async def _describe(server: ServerConnection, req: Request) -> list[Column]:
    """The client's own statement, described by shard 0: what one Postgres would send."""
    server.send(m.message(m.PARSE, m.cstr("") + m.cstr(req.sql) + req.param_types)
                + m.message(m.DESCRIBE, b"S\x00") + m.message(m.FLUSH))
    while True:
        mtype, body = await server.recv()
        if mtype == m.ROW_DESCRIPTION:
            return parse_row_description(body)
        if mtype == m.NO_DATA:
            return []
        if mtype == m.ERROR_RESPONSE:
            raise ShardError(m.decode_fields(body), server.shard)


def _flush(batch: list[bytes], write: Callable[[bytes], None]) -> None:
    if batch:
        write(b"".join(batch))
        batch.clear()


def _bound(b: Bound | None, req: Request) -> int | None:
    if b is None:
        return None
    if b[0] == "const":
        return b[1]
    value = req.values[b[1]] if b[1] < len(req.values) else None
    if value is None:
        return None  # LIMIT NULL is LIMIT ALL
    if isinstance(value, bytes):
        return int.from_bytes(value, "big", signed=True)
    return int(str(value))


# ---------------------------------------------------------------------- sorting
class _Desc:
    __slots__ = ("v",)

    def __init__(self, value: Any) -> None:
        self.v = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.v < self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.v == other.v)

    __hash__ = None  # type: ignore[assignment]


def _value_reader(column: int, desc: list[Column], ctx: Context
                  ) -> Callable[[list[bytes | None]], Any]:
    """Reads one column of a shard row as a key with Postgres' ordering and equality."""
    column = column if column >= 0 else len(desc) + column
    col = desc[column]
    codec = ctx.codec(col.oid)
    binary = col.binary
    key = codec.sort_key

    def read(values: list[bytes | None]) -> Any:
        raw = values[column]
        if raw is None:
            return None
        try:
            return key(codec.decode(raw, binary))
        except v.InvalidValue:
            raise FeatureNotSupported(
                f"shardwire cannot read a {codec.type_name} value in this session's output "
                "style to merge it", hint="use the default DateStyle/IntervalStyle, or "
                "binary results") from None

    return read


def _key_reader(k: SortKey, desc: list[Column], ctx: Context
                ) -> Callable[[list[bytes | None]], tuple[Any, ...]]:
    read = _value_reader(k.column, desc, ctx)
    null_rank, value_rank = (0, 1) if k.nulls_first else (1, 0)
    desc_order = k.desc

    def key(values: list[bytes | None]) -> tuple[Any, ...]:
        value = read(values)
        if value is None:
            return (null_rank, 0)
        return (value_rank, _Desc(value) if desc_order else value)

    return key


async def _merged(streams: list[Stream], keys: list[Callable[[list[bytes | None]], Any]]):  # type: ignore[no-untyped-def]
    heap: list[tuple[Any, int, int, bytes]] = []
    seq = 0

    def key_of(body: bytes) -> tuple[Any, ...]:
        values = split_row(body)
        return tuple(k(values) for k in keys)

    for i, st in enumerate(streams):
        row = await st.next_row()
        if row is not None:
            heap.append((key_of(row), i, seq, row))
            seq += 1
    heapq.heapify(heap)
    while heap:
        _, i, _, row = heap[0]
        yield row
        nxt = await streams[i].next_row()
        if nxt is None:
            heapq.heappop(heap)
        else:
            seq += 1
            heapq.heapreplace(heap, (key_of(nxt), i, seq, nxt))


async def _concat(streams: list[Stream]):  # type: ignore[no-untyped-def]
    for st in streams:
        while (row := await st.next_row()) is not None:
            yield row


async def _distinct(source: Any, readers: list[Callable[[list[bytes | None]], Any]],
                    cap: int):  # type: ignore[no-untyped-def]
    seen: set[tuple[Any, ...]] = set()
    async for body in source:
        values = split_row(body)
        key = tuple(_hashable(r(values)) for r in readers)
        if key in seen:
            continue
        if len(seen) >= cap:
            raise _too_many(cap)
        seen.add(key)
        yield body


async def _distinct_on(source: Any, readers: list[Callable[[list[bytes | None]], Any]]):  # type: ignore[no-untyped-def]
    last: tuple[Any, ...] | None = None
    async for body in source:
        values = split_row(body)
        key = tuple(_hashable(r(values)) for r in readers)
        if key == last:
            continue
        last = key
        yield body


def _hashable(value: Any) -> Any:
    return value if not isinstance(value, list) else tuple(value)


def _too_many(cap: int) -> ShardwireError:
    return ShardwireError(
        f"a cross-shard query produced more than {cap} groups (merge.max_groups)",
        sqlstate="53200",
        hint="add a filter or the shard key, or raise merge.max_groups in the topology")


# ---------------------------------------------------------------------- aggregation
class _Group:
    __slots__ = ("aggs", "distinct", "keys")

    def __init__(self, keys: list[Any], n: int) -> None:
        self.keys = keys
        self.aggs: list[Any] = [None] * n
        self.distinct: dict[Any, Any] = {}


async def _aggregate(plan: MergePlan, streams: list[Stream], desc: list[Column],
                     ctx: Context, max_groups: int) -> list[_Group]:
    """Fold every shard's partial rows (binary) into one entry per group."""
    key_codecs = [(ctx.codec(desc[c].oid), c) for c in plan.group_keys]
    groups: dict[tuple[Any, ...], _Group] = {}
    specs = plan.aggs
    partials = [[(ctx.codec(desc[c].oid), c, desc[c].oid) for c in spec.args]
                for spec in specs]
    ordered = {j for j, spec in enumerate(specs) if spec.func in _ORDERED}
    for st in streams:
        while (body := await st.next_row()) is not None:
            values = split_row(body)
            decoded = [None if values[c] is None else codec.decode(values[c], True)
                       for codec, c in key_codecs]
            ident = tuple(None if x is None else _hashable(codec.group_key(x))
                          for x, (codec, _) in zip(decoded, key_codecs, strict=True))
            g = groups.get(ident)
            if g is None:
                if len(groups) >= max_groups:
                    raise _too_many(max_groups)
                g = groups[ident] = _Group(decoded, len(specs))
            for j, spec in enumerate(specs):
                if j in ordered:
                    _gather_ordered(g, j, spec, values, ctx)
                    continue
                cols = partials[j]
                parts = [None if values[c] is None else codec.decode(values[c], True)
                         for codec, c, _ in cols]
                _fold(g, j, spec, parts, cols[0][0], cols[0][2])
    if not plan.group_keys and not groups:
        groups[()] = _Group([], len(specs))
    return list(groups.values())


def _fold(g: _Group, j: int, spec: AggSpec, parts: list[Any], codec: v.Codec,
          oid: int) -> None:
    if spec.distinct:
        value = parts[0]
        if value is not None:
            g.distinct.setdefault(_hashable(codec.group_key(value)), value)
        return
    cur = g.aggs[j]
    func = spec.func
    if func == "count":
        g.aggs[j] = (cur or 0) + (parts[0] or 0)
    elif func == "sum":
        if parts[0] is not None:
            g.aggs[j] = parts[0] if cur is None else v.sum_add(oid, cur, parts[0])
    elif func == "avg":
        total, count = parts
        if count:
            prev, n = cur or (None, 0)
            g.aggs[j] = (total if prev is None else v.sum_add(oid, prev, total), n + count)
    elif func == "min" or func == "max":
        value = parts[0]
        if value is None:
            return
        if cur is None:
            g.aggs[j] = value
            return
        a, b = codec.sort_key(value), codec.sort_key(cur)
        if (a < b) if func == "min" else (b < a):
            g.aggs[j] = value
    elif func == "bool_and":
        if parts[0] is not None:
            g.aggs[j] = parts[0] if cur is None else (cur and parts[0])
    elif func == "bool_or":
        if parts[0] is not None:
            g.aggs[j] = parts[0] if cur is None else (cur or parts[0])
    elif func == "any" and cur is None:
        g.aggs[j] = parts[0]


_ORDERED = frozenset({"string_agg", "array_agg"})


class ArrayValue:
    """A merged array_agg: its element type and elements (decoded)."""

    __slots__ = ("elem_oid", "items")

    def __init__(self, elem_oid: int, items: list[Any]) -> None:
        self.elem_oid = elem_oid
        self.items = items


def _gather_ordered(g: _Group, j: int, spec: AggSpec, values: list[bytes | None],
                    ctx: Context) -> None:
    """Collect one shard's arrays of a string_agg / array_agg: (sort key, value) pairs."""
    arrays = []
    for c in spec.args:
        raw = values[c]
        if raw is None:  # no rows in this shard's group
            return
        decoded = decode_binary_array(raw)
        if decoded is None:
            raise FeatureNotSupported("array_agg of arrays across shards is not supported")
        arrays.append(decoded)
    elem_oid, items = arrays[0]
    codec = ctx.codec(elem_oid)
    state = g.aggs[j]
    if state is None:
        state = g.aggs[j] = (elem_oid, [])
    key_codecs = [ctx.codec(oid) for oid, _ in arrays[1:]]
    pairs = state[1]
    for n, raw in enumerate(items):
        value = None if raw is None else codec.decode(raw, True)
        key = []
        for (desc, nulls_first), kc, (_, kitems) in zip(spec.order, key_codecs, arrays[1:],
                                                        strict=True):
            kraw = kitems[n]
            if kraw is None:
                key.append((0 if nulls_first else 2, 0))
            else:
                sk = kc.sort_key(kc.decode(kraw, True))
                key.append((1, _Desc(sk) if desc else sk))
        pairs.append((tuple(key), value))


def _final_ordered(spec: AggSpec, g: _Group, j: int, ctx: Context) -> Any:
    state = g.aggs[j]
    if state is None:
        return None
    elem_oid, pairs = state
    pairs.sort(key=lambda p: p[0])  # stable: ties keep the shards' order
    values = [v_ for _, v_ in pairs]
    if spec.distinct:
        codec = ctx.codec(elem_oid)
        seen: set[Any] = set()
        unique = []
        for x in values:
            key = None if x is None else _hashable(codec.group_key(x))
            if key in seen:
                continue
            seen.add(key)
            unique.append(x)
        values = unique
    if spec.func == "array_agg":
        return ArrayValue(elem_oid, values) if values else None
    texts = [x for x in values if x is not None]
    if not texts:
        return None
    return (spec.separator or "").join(texts)


def encode_array(value: ArrayValue, binary: bool, ctx: Context) -> bytes:
    """An array as Postgres sends it (one dimension, lower bound 1)."""
    codec = ctx.codec(value.elem_oid)
    if binary:
        has_null = any(x is None for x in value.items)
        parts = [struct.pack("!iiIii", 1, 1 if has_null else 0, value.elem_oid,
                             len(value.items), 1)]
        for x in value.items:
            if x is None:
                parts.append(_I32.pack(-1))
            else:
                raw = codec.encode(x, True)
                parts.append(_I32.pack(len(raw)) + raw)
        return b"".join(parts)
    out = []
    for x in value.items:
        if x is None:
            out.append("NULL")
            continue
        text = codec.encode(x, False).decode("utf-8", "surrogateescape")
        if (text == "" or text.upper() == "NULL"
                or any(ch in '{}",\\' or ch.isspace() for ch in text)):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(text)
    return ("{" + ",".join(out) + "}").encode()


def _final(spec: AggSpec, g: _Group, j: int, out_oid: int) -> Any:
    if spec.distinct:
        vals = list(g.distinct.values())
        if spec.func == "count":
            return len(vals)
        if not vals:
            return None
        if spec.func == "sum":
            total = vals[0]
            for x in vals[1:]:
                total = v.sum_add(out_oid, total, x)
            return total
        if spec.func == "avg":
            total = vals[0]
            for x in vals[1:]:
                total = total + x
            return v.average(total, len(vals), out_oid)
        if spec.func == "min" or spec.func == "max":
            raise FeatureNotSupported(f"{spec.func}(DISTINCT) across shards")
        if spec.func == "bool_and":
            return all(vals)
        return any(vals)
    value = g.aggs[j]
    if spec.func == "count":
        return value or 0
    if spec.func == "avg":
        if value is None:
            return None
        total, count = value
        return v.average(total, count, out_oid)
    return value


def _finish_groups(plan: MergePlan, groups: list[_Group], desc: list[Column],
                   original: list[Column], ctx: Context) -> list[list[bytes | None]]:
    assert plan.outputs is not None
    n_keys = len(plan.group_keys)
    n_aggs = len(plan.aggs)

    def at(column: int) -> int:  # a plan column as an index of the merged row
        return n_keys + n_aggs + column - EXPR if column >= EXPR else column

    # the output type of each aggregate or expression, from the column that shows it
    # (helper aggregates of HAVING / ORDER BY keep their partial's type)
    shown: dict[int, int] = {}
    for out, col in zip(plan.outputs, original, strict=False):
        shown[at(out.column)] = col.oid
    oids = [desc[c].oid for c in plan.group_keys]
    for j, spec in enumerate(plan.aggs):
        oids.append(shown.get(n_keys + j, v.NUMERIC_OID if spec.func == "avg"
                              else v.INT8 if spec.func == "count"
                              else desc[spec.args[0]].oid))
    for i in range(len(plan.exprs)):
        oids.append(shown.get(n_keys + n_aggs + i, v.NUMERIC_OID))
    codecs = [ctx.codec(oid) for oid in oids]
    rows: list[list[Any]] = []
    for g in groups:
        row = list(g.keys)
        for j, spec in enumerate(plan.aggs):
            if spec.func in _ORDERED:
                row.append(_final_ordered(spec, g, j, ctx))
            else:
                row.append(_final(spec, g, j, oids[n_keys + j]))
        if plan.having is not None and plan.having(row) is not True:
            continue
        for i, e in enumerate(plan.exprs):
            row.append(_coerce(e(row), codecs[n_keys + n_aggs + i]))
        rows.append(row)
    for k in reversed(plan.order):  # stable sorts, last key first
        col = at(k.column)
        key = codecs[col].sort_key
        nonnull = [r for r in rows if r[col] is not None]
        nulls = [r for r in rows if r[col] is None]
        nonnull.sort(key=lambda r, col=col, key=key: key(_coerce(r[col], codecs[col])),
                     reverse=k.desc)
        rows = nulls + nonnull if k.nulls_first else nonnull + nulls
    out_codecs = [ctx.codec(c.oid) for c in original]
    for col in original:
        if not col.binary:
            ctx.check_text(col.oid)
    out: list[list[bytes | None]] = []
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        if plan.distinct:
            key = tuple(None if row[at(oc.column)] is None else _hashable(
                codecs[at(oc.column)].group_key(_coerce(row[at(oc.column)],
                                                        codecs[at(oc.column)])))
                for oc in plan.outputs)
            if key in seen:
                continue
            seen.add(key)
        encoded: list[bytes | None] = []
        for i, oc in enumerate(plan.outputs):
            x = row[at(oc.column)]
            codec = out_codecs[i]
            if isinstance(x, ArrayValue):
                encoded.append(encode_array(x, original[i].binary, ctx))
                continue
            encoded.append(None if x is None else codec.encode(_coerce(x, codec),
                                                                original[i].binary))
        out.append(encoded)
    return out


def _coerce(x: Any, codec: v.Codec) -> Any:
    """A computed value as the type of the column that shows it."""
    oid = codec.oid
    if oid in v.INT_OIDS and isinstance(x, Decimal):
        return int(x)
    if oid == v.NUMERIC and isinstance(x, int) and not isinstance(x, bool):
        return Decimal(x)
    if oid in (v.FLOAT4, v.FLOAT8) and isinstance(x, (int, Decimal)):
        return float(x)
    return x
