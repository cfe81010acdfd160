"""Owns splitting COPY ... FROM STDIN data between shards by the shard key of each row.

Pure and incremental: :class:`CopySplitter` is fed the payloads of the client's CopyData
messages in order (rows may span messages) and returns, per call, the complete rows grouped
by shard as ``(shard, bytes)`` pairs, bytes exactly as the client sent them.
:func:`split_copy_rows` does the same for a whole stream at once.

Formats (PostgreSQL "COPY" file formats):

* text: one row per line; fields separated by the delimiter; a backslash escapes the next
  character (so ``\\<newline>`` and ``\\<delimiter>`` are data); the NULL string (default
  ``\\N``) is compared with the raw field; ``\\.`` alone on a line ends the data.
* csv: fields separated by the delimiter; a quoted field may hold delimiters, quotes
  (doubled, or escaped with ESCAPE) and newlines; an unquoted field equal to the NULL
  string (default empty) is NULL, a quoted one never is.
* binary is not supported for sharded tables (the planner rejects it).

With HEADER the first line is a header: it goes to every shard (each shard's COPY was sent
with the same HEADER option and skips, or with MATCH checks, its first line).
Keys are decoded as UTF-8 (client_encoding UTF8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from proxy.errors import ShardwireError
from proxy.sql.route import CopyOptions

__all__ = ["CopySplitter", "column_order_sql", "key_index_of", "split_copy_rows"]

_TEXT_ESCAPES = {
    ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11,
}


class CopySplitter:
    """Assigns each row of a COPY FROM STDIN stream to a shard (see module docstring).

    ``shard_of`` maps the key field's text (``None`` for NULL) to a shard name and raises
    :class:`ShardwireError` for a value no shard takes; ``shards`` lists every shard (for
    the header line).
    """

    def __init__(
        self,
        options: CopyOptions,
        key_index: int,
        shard_of: Callable[[str | None], str],
        shards: Sequence[str],
    ) -> None:
        if options.format == "binary":
            raise ShardwireError(
                "binary COPY cannot be split by shard key", sqlstate="0A000"
            )
        if len(options.delimiter) != 1:
            raise ShardwireError("COPY delimiter must be a single character", sqlstate="22023")
        self.options = options
        self.key_index = key_index
        self.shard_of = shard_of
        self.shards = tuple(shards)
        self.csv = options.format == "csv"
        self.delim = options.delimiter.encode()
        self.null = options.null.encode()
        self.quote = options.quote.encode()[:1] or b'"'
        self.escape = options.escape.encode()[:1] or self.quote
        self.header_pending = options.header
        self.done = False
        self.rows = 0
        self.line = 0
        self._buf = b""
        self._cache: dict[bytes | None, str] = {}

    # ----------------------------------------------------------------- feeding

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Split one CopyData payload; returns ``(shard, rows)`` for the complete rows."""
        if self.done:
            return []
        buf = self._buf + bytes(data) if self._buf else bytes(data)
        out: list[tuple[str, bytes]] = []
        pos = 0
        n = len(buf)
        while pos < n:
            end = self._row_end(buf, pos)
            if end < 0:
                break
            self._take(buf, pos, end, out)
            pos = end
            if self.done:
                pos = n
                break
        self._buf = buf[pos:]
        return out

    def finish(self) -> list[tuple[str, bytes]]:
        """The last row when the data does not end with a newline (at CopyDone)."""
        out: list[tuple[str, bytes]] = []
        if self._buf and not self.done:
            buf = self._buf
            if self.csv and self._open_quote(buf):
                raise ShardwireError(
                    f"COPY: unterminated CSV quoted field in row {self.line + 1}",
                    sqlstate="22P04",
                )
            self._take(buf, 0, len(buf), out)
        self._buf = b""
        return out

    # ----------------------------------------------------------------- rows

    def _row_end(self, buf: bytes, pos: int) -> int:
        """The end (after the newline) of the row starting at ``pos``; -1 if incomplete."""
        if not self.csv:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                return -1
            if b"\\" not in buf[pos:nl]:
                return nl + 1
            i = pos
            while True:
                bs = buf.find(b"\\", i, nl)
                if bs < 0:
                    return nl + 1
                if bs + 1 == nl:  # an escaped newline is data: the row goes on
                    nl = buf.find(b"\n", nl + 1)
                    if nl < 0:
                        return -1
                i = bs + 2
        quote = self.quote[0]
        escape = self.escape[0]
        i = pos
        in_quotes = False
        n = len(buf)
        while i < n:
            c = buf[i]
            if in_quotes:
                if c == escape and escape != quote and i + 1 < n and buf[i + 1] in (
                    quote, escape
                ):
                    i += 2
                    continue
                if c == quote:
                    if escape == quote and i + 1 < n and buf[i + 1] == quote:
                        i += 2
                        continue
                    if escape == quote and i + 1 == n:
                        return -1  # a doubled quote may continue in the next chunk
                    in_quotes = False
            elif c == quote:
                in_quotes = True
            elif c == 10:
                return i + 1
            i += 1
        return -1

    def _open_quote(self, buf: bytes) -> bool:
        return self._row_end(buf + b"\n", 0) < 0

    def _take(self, buf: bytes, start: int, end: int, out: list[tuple[str, bytes]]) -> None:
        row = buf[start:end]
        self.line += 1
        body = row.rstrip(b"\n")
        if body.endswith(b"\r"):
            body = body[:-1]
        if self.header_pending:
            self.header_pending = False
            for shard in self.shards:
                out.append((shard, row))
            return
        if body == b"\\.":
            self.done = True  # end-of-data marker: the rest is ignored, as Postgres does
            return
        key = self._key_field(body)
        shard = self._cache.get(key)
        if shard is None:
            shard = self.shard_of(None if key is None else self._decode(key))
            if len(self._cache) < 4096:
                self._cache[key] = shard
        self.rows += 1
        if out and out[-1][0] == shard:
            out[-1] = (shard, out[-1][1] + row)
        else:
            out.append((shard, row))

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ShardwireError(
                f"COPY: row {self.line} has a shard key that is not valid UTF-8",
                sqlstate="22021",
            ) from None

    # ----------------------------------------------------------------- fields

    def _key_field(self, line: bytes) -> bytes | None:
        if self.csv:
            return self._csv_field(line)
        return self._text_field(line)

    def _too_few(self) -> ShardwireError:
        return ShardwireError(
            f"COPY: row {self.line} has no field {self.key_index + 1} (the shard key)",
            sqlstate="22P04",
        )

    def _text_field(self, line: bytes) -> bytes | None:
        k = self.key_index
        if b"\\" not in line:
            parts = line.split(self.delim, k + 1)
            if len(parts) <= k:
                raise self._too_few()
            field = parts[k]
            return None if field == self.null else field
        # split on unescaped delimiters, then compare the raw field with NULL and unescape
        fields: list[bytes] = []
        start = 0
        i = 0
        n = len(line)
        d = self.delim[0]
        while i < n:
            c = line[i]
            if c == 92:  # backslash
                i += 2
                continue
            if c == d:
                fields.append(line[start:i])
                if len(fields) > k:
                    break
                start = i + 1
            i += 1
        else:
            fields.append(line[start:])
        if len(fields) <= k:
            raise self._too_few()
        raw = fields[k]
        if raw == self.null:
            return None
        return _unescape_text(raw)

    def _csv_field(self, line: bytes) -> bytes | None:
        k = self.key_index
        quote = self.quote[0]
        escape = self.escape[0]
        d = self.delim[0]
        if self.quote not in line:
            parts = line.split(self.delim, k + 1)
            if len(parts) <= k:
                raise self._too_few()
            field = parts[k]
            return None if field == self.null else field
        index = 0
        i = 0
        n = len(line)
        while True:
            # one field starting at i
            quoted = False
            value = bytearray()
            while i < n and line[i] != d:
                c = line[i]
                if c == quote:
                    quoted = True
                    i += 1
                    while i < n:
                        c = line[i]
                        if c == escape and i + 1 < n and (
                            line[i + 1] == quote or (escape != quote and line[i + 1] == escape)
                        ):
                            value.append(line[i + 1])
                            i += 2
                            continue
                        if c == quote:
                            i += 1
                            break
                        value.append(c)
                        i += 1
                    continue
                value.append(c)
                i += 1
            if index == k:
                if not quoted and bytes(value) == self.null:
                    return None
                return bytes(value)
            if i >= n:
                raise self._too_few()
            i += 1  # the delimiter
            index += 1


def _unescape_text(raw: bytes) -> bytes:
    """A text-format field's value: backslash escapes decoded."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != 92 or i + 1 == n:
            out.append(c)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in _TEXT_ESCAPES:
            out.append(_TEXT_ESCAPES[nxt])
            i += 2
        elif 48 <= nxt <= 55:  # \ooo octal
            j = i + 1
            while j < n and j < i + 4 and 48 <= raw[j] <= 55:
                j += 1
            out.append(int(raw[i + 1 : j], 8) & 0xFF)
            i = j
        elif nxt == ord("x") and i + 2 < n and chr(raw[i + 2]) in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and chr(raw[j]) in "0123456789abcdefABCDEF":
                j += 1
            out.append(int(raw[i + 2 : j], 16))
            i = j
        else:
            out.append(nxt)
            i += 2
    return bytes(out)


def column_order_sql(table: str) -> str:
    """SQL giving the columns COPY reads when the statement lists none, in order (run it on
    any shard; needed when :attr:`CopySplit.key_index` is None, e.g. pgbench's
    ``copy pgbench_accounts from stdin``). Generated columns are not copied."""
    schema, name = table.split(".", 1)
    regclass = '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
    literal = "'" + regclass.replace("'", "''") + "'"
    return ("SELECT attname FROM pg_catalog.pg_attribute "
            f"WHERE attrelid = {literal}::pg_catalog.regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum")


def key_index_of(columns: Sequence[str], key: str) -> int:
    """The position of the shard key among ``columns`` (from :func:`column_order_sql`)."""
    try:
        return list(columns).index(key)
    except ValueError:
        raise ShardwireError(f"COPY: the table has no column {key!r}",
                             sqlstate="42703") from None


def split_copy_rows(
    options: CopyOptions,
    key_index: int,
    chunks: Iterable[bytes],
    shard_of: Callable[[str | None], str],
    shards: Sequence[str],
) -> dict[str, bytes]:
    """All rows of a COPY FROM STDIN stream, grouped by shard (see :class:`CopySplitter`).

    Returns ``{shard: data}`` for every shard that receives at least one line.
    """
    splitter = CopySplitter(options, key_index, shard_of, shards)
    out: dict[str, bytearray] = {}
    for chunk in chunks:
        for shard, data in splitter.feed(chunk):
            out.setdefault(shard, bytearray()).extend(data)
    for shard, data in splitter.finish():
        out.setdefault(shard, bytearray()).extend(data)
    return {shard: bytes(data) for shard, data in out.items()}
