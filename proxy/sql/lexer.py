"""Owns the cheap pass over SQL text: tokens, hint comments, and the literal-normalised form.

One regular-expression scan (no sqlglot) splits a statement into significant tokens with
their positions, following PostgreSQL's lexical rules where they matter for routing:
standard and ``E''`` strings, dollar quotes, quoted identifiers, ``$n`` parameters, nested
``/* */`` comments and the operator rule (``=-1`` is ``=`` then ``-1``).

The scan gives the planner:

* the *normalised text*: whitespace collapsed, comments dropped, unquoted words in lower
  case, ``$n`` written ``:pn`` (sqlglot 30 cannot tokenize ``$1,$2`` or ``IN ($1,$2)``), and
  in DML every literal that sits where a value goes (after ``=``, ``<``, ``(``, ``,``,
  ``BETWEEN``, ``AND``, ...) replaced by a placeholder ``:ln``. Statements that differ only
  in such literals share one normalised text, so one sqlglot parse serves all of them: the
  literal values are read back from the tokens (:meth:`Scan.literal`);
* hint comments ``/* shard: s1 */`` and ``/* shard_key: 42 */`` (also as ``--`` comments);
* the head words that classify the statement, and every identifier (the cheap "does this
  name a configured table" check for statements sqlglot cannot parse).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from proxy.topology.router import KeyValue

__all__ = ["Hint", "Scan", "Slot", "literal_value", "normalize", "scan"]

# A literal replaced by a placeholder: (start, end, kind) in the SQL text, kind "n" (number),
# "s" (standard string) or "e" (E'' string).
Slot = tuple[int, int, str]

WORD: Final = 1
QIDENT: Final = 2
NUM: Final = 3
STR: Final = 4  # '...'
ESTR: Final = 5  # E'...'
XSTR: Final = 6  # B'', X'', N'', U&'': kept verbatim, never a placeholder
DOLLAR: Final = 7  # $tag$...$tag$
PARAM: Final = 8  # $n
OP: Final = 9
PUNCT: Final = 10
BAD: Final = 11  # an unterminated string/identifier/comment, or a stray character

_TOKEN = re.compile(
    r"""
     (\s+)                                                    # 1 whitespace
    |(--[^\n]*)                                               # 2 line comment
    |(/\*)                                                    # 3 block comment start
    |([eE]'(?:[^'\\]|\\[\s\S]|'')*')                          # 4 escape string
    |([bBxXnN]'(?:[^']|'')*'|[uU]&'(?:[^']|'')*')             # 5 bit/hex/national/unicode
    |('(?:[^']|'')*')                                         # 6 string
    |(\$\d+)                                                  # 7 parameter
    |(\$(?P<tag>(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?)\$[\s\S]*?\$(?P=tag)\$)  # 8 dollar
    |("(?:[^"]|"")*"|[uU]&"(?:[^"]|"")*")                     # 10 quoted identifier
    |(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
      |(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?) # 11 number
    |([A-Za-z_\x80-\uffff][\w$\x80-\uffff]*)                  # 12 word
    |(::|[(),;\[\].:])                                        # 13 punctuation
    |([-+*/<>=~!@\#%^&|`?]+)                                  # 14 operator
    |([\s\S])                                                 # 15 anything else
    """,
    re.VERBOSE,
)
_GROUP_KIND = {4: ESTR, 5: XSTR, 6: STR, 7: PARAM, 8: DOLLAR, 10: QIDENT, 11: NUM, 12: WORD,
               13: PUNCT}
_OP_KEEP_SIGN = frozenset("~!@#%^&|`?")

# Literals are replaced by placeholders only where a value goes (see module docstring).
_VALUE_AFTER_OPS: Final = frozenset({"=", "<>", "!=", "<", ">", "<=", ">=", "-", "+"})
_VALUE_AFTER_PUNCT: Final = frozenset({"(", ","})
_VALUE_AFTER_WORDS: Final = frozenset({"between", "and", "or", "when", "then", "else", "not"})
# ``varchar(10)``, ``numeric(10, 2)``: type modifiers must stay literal.
_TYPE_WORDS: Final = frozenset({
    "varchar", "char", "character", "varying", "nchar", "numeric", "decimal", "dec", "bit",
    "varbit", "timestamp", "timestamptz", "time", "timetz", "interval", "float",
})
DML_HEADS: Final = frozenset({"select", "insert", "update", "delete", "with", "values",
                              "table", "merge", "("})

_SLOT_KIND = {NUM: "n", STR: "s", ESTR: "e"}

_HINT_SHARD = re.compile(r"""\bshard\s*[:=]\s*('(?:[^']|'')*'|"[^"]*"|[\w.\-]+)""", re.I)
_HINT_KEY = re.compile(r"""\bshard_key\s*[:=]\s*('(?:[^']|'')*'|"[^"]*"|[^\s,;*]+)""", re.I)


@dataclass(frozen=True, slots=True)
class Hint:
    """A routing hint from a comment: a shard name (or ``all``) or a shard-key value."""

    shard: str | None = None
    key: KeyValue | None = None
    text: str = ""  # as written, for reasons: "/* shard: s1 */"


class Scan:
    """The tokens of one SQL text and what the planner reads from them."""

    __slots__ = ("_words", "bad", "comments", "ends", "kinds", "sql", "starts")

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.kinds: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.comments: list[tuple[int, int]] = []
        self.bad = False
        self._words: list[str] | None = None
        self._run()

    # ----------------------------------------------------------------- scanning

    def _run(self) -> None:
        sql = self.sql
        n = len(sql)
        pos = 0
        match = _TOKEN.match
        kinds, starts, ends = self.kinds, self.starts, self.ends
        while pos < n:
            m = match(sql, pos)
            assert m is not None  # the last alternative matches any character
            g = m.lastindex
            end = m.end()
            if g == 1:
                pos = end
                continue
            if g == 2:
                self.comments.append((pos, end))
                pos = end
                continue
            if g == 3:
                end = _block_comment_end(sql, pos)
                if end < 0:
                    self.bad = True
                    end = n
                self.comments.append((pos, end))
                pos = end
                continue
            if g == 14:
                text = m.group(14)
                cut = _comment_in_operator(text)
                if cut is not None:
                    text = text[:cut]
                text = _trim_operator(text)
                end = pos + len(text)
                kind = OP
            elif g == 15:
                ch = sql[pos]
                kind = BAD
                if ch in "'\"$":
                    self.bad = True  # an unterminated quote or dollar quote
                elif ch == "\\":
                    self.bad = True
            else:
                kind = _GROUP_KIND[g]
            kinds.append(kind)
            starts.append(pos)
            ends.append(end)
            pos = end

    # ----------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.kinds)

    def text(self, i: int) -> str:
        return self.sql[self.starts[i] : self.ends[i]]

    def word(self, i: int) -> str:
        """Token ``i`` in lower case if it is an unquoted word, else ``""``."""
        if 0 <= i < len(self.kinds) and self.kinds[i] == WORD:
            return self.sql[self.starts[i] : self.ends[i]].lower()
        return ""

    def words(self) -> list[str]:
        """Every token as the planner compares it: unquoted words lower-cased."""
        if self._words is None:
            sql = self.sql
            self._words = [
                sql[s:e].lower() if k == WORD else sql[s:e]
                for k, s, e in zip(self.kinds, self.starts, self.ends, strict=True)
            ]
        return self._words

    def is_punct(self, i: int, text: str) -> bool:
        return (
            0 <= i < len(self.kinds)
            and self.kinds[i] in (PUNCT, OP)
            and self.sql[self.starts[i] : self.ends[i]] == text
        )

    def head(self) -> str:
        """The first word (lower case), ``"("`` for a parenthesised query, or ``""``."""
        if not self.kinds:
            return ""
        if self.kinds[0] == WORD:
            return self.word(0)
        if self.is_punct(0, "("):
            return "("
        return ""

    def statement_bounds(self) -> list[tuple[int, int]]:
        """Token ranges ``[start, end)`` of the ``;``-separated statements (empty ones
        dropped)."""
        bounds: list[tuple[int, int]] = []
        start = 0
        depth = 0
        sql = self.sql
        for i, kind in enumerate(self.kinds):
            if kind != PUNCT:
                continue
            ch = sql[self.starts[i]]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == ";" and depth <= 0:
                if i > start:
                    bounds.append((start, i))
                start = i + 1
        if start < len(self.kinds):
            bounds.append((start, len(self.kinds)))
        return bounds

    def identifiers(self, start: int = 0, end: int | None = None) -> list[tuple[str, ...]]:
        """Every (possibly qualified) identifier in tokens ``[start, end)`` as its folded
        parts: ``('public', 'users')``."""
        out: list[tuple[str, ...]] = []
        kinds = self.kinds
        n = len(kinds) if end is None else end
        i = start
        while i < n:
            if kinds[i] in (WORD, QIDENT):
                parts = [self.ident(i)]
                j = i + 1
                while j + 1 < n and self.is_punct(j, ".") and kinds[j + 1] in (WORD, QIDENT):
                    parts.append(self.ident(j + 1))
                    j += 2
                out.append(tuple(parts))
                i = j
            else:
                i += 1
        return out

    def ident(self, i: int) -> str:
        """Identifier token ``i`` folded as Postgres does (quoted: verbatim)."""
        text = self.text(i)
        if self.kinds[i] == QIDENT:
            if text[0] in "uU":
                text = text[2:]  # U&"..." : escapes are rare in table names; kept as written
            return text[1:-1].replace('""', '"')
        return text.lower()

    # ----------------------------------------------------------------- hints

    def hints(self) -> list[Hint]:
        """The routing hints in the statement's comments, in order of appearance."""
        found: list[tuple[int, Hint]] = []
        for start, end in self.comments:
            body = self.sql[start:end]
            if "shard" not in body.lower():
                continue
            text = " ".join(body.split())
            if len(text) > 80:
                text = text[:77] + "..."
            for m in _HINT_KEY.finditer(body):
                found.append((start + m.start(), Hint(key=_hint_value(m.group(1)), text=text)))
            for m in _HINT_SHARD.finditer(body):
                raw = m.group(1)
                if raw[0] in "'\"":
                    raw = raw[1:-1]
                found.append((start + m.start(), Hint(shard=raw, text=text)))
        found.sort(key=lambda pair: pair[0])
        return [hint for _, hint in found]

    # ----------------------------------------------------------------- normalising

    def normalize(self, start: int, end: int, *, literals: bool) -> tuple[str, list[Slot]]:
        """The normalised text of tokens ``[start, end)`` and the literal slots: placeholder
        ``:l{k}`` stands for ``slots[k]`` (a ``(start, end, kind)`` span of ``sql``).

        ``literals=False`` keeps every literal as written. This is the general (slower)
        form of :func:`normalize`, for text the fast scanner declines.
        """
        sql = self.sql
        kinds, starts, ends = self.kinds, self.starts, self.ends
        out: list[str] = []
        slots: list[Slot] = []
        prev_end = -1
        prev_text = ""  # previous significant token, lower case
        type_parens: list[bool] = []  # for each open "(", whether it holds type modifiers
        prev_word = ""
        for i in range(start, end):
            kind = kinds[i]
            s, e = starts[i], ends[i]
            if prev_end >= 0 and s > prev_end:
                out.append(" ")
            prev_end = e
            if kind == WORD:
                text = sql[s:e]
                out.append(text)
                prev_text = prev_word = text.lower()
                continue
            if kind == PARAM:
                out.append(" :p" + sql[s + 1 : e] + " ")
                prev_text = "$"
                continue
            if kind == PUNCT:
                text = sql[s:e]
                if text == "(":
                    type_parens.append(prev_text == prev_word and prev_word in _TYPE_WORDS)
                elif text == ")" and type_parens:
                    type_parens.pop()
                out.append(text)
                prev_text = text
                continue
            if (
                literals
                and kind in (NUM, STR, ESTR)
                and (
                    prev_text in _VALUE_AFTER_OPS
                    or prev_text in _VALUE_AFTER_WORDS
                    or (prev_text in _VALUE_AFTER_PUNCT and not (type_parens and type_parens[-1]))
                )
            ):
                out.append(f" :l{len(slots)} ")
                slots.append((s, e, _SLOT_KIND[kind]))
                prev_text = "?"
                continue
            text = sql[s:e]
            out.append(text)
            prev_text = text if kind == OP else "?"
        return "".join(out), slots

# --------------------------------------------------------------------------- fast path

# Only what can change the normalised text: comments, strings, parameters, quoted
# identifiers and numbers. Every alternative starts with a fixed character set, which lets
# the regex engine skip the rest of the text quickly.
_FAST = re.compile(
    r"--[^\n]*"
    r"|/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"
    r"|'(?:[^']|'')*'"
    r"|\$\d+"
    r'|"(?:[^"]|"")*"'
    r"|\d[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?\d+)?|\.\d[\d_]*(?:[eE][+-]?\d+)?"
    r"""|[$'"/]"""
)
_ESTR = re.compile(r"'(?:[^'\\]|\\[\s\S]|'')*'")
_TRAILING_OP = re.compile(r"[-+*/<>=~!@#%^&|`?]+$")
_TRAILING_WORD = re.compile(r"[A-Za-z_\x80-\uffff][\w$\x80-\uffff]*$")
_WORD_CHAR = re.compile(r"[\w$\x80-\uffff]")


def _context(seg: str) -> str:
    """What the text before a literal makes of it: ``v`` a value position, ``t`` the first
    type modifier (``varchar(``), ``""`` anything else. ``seg`` is right-stripped."""
    c = seg[-1]
    if c == "(":
        m = _TRAILING_WORD.search(seg[:-1].rstrip())
        return "t" if m is not None and m.group().lower() in _TYPE_WORDS else "v"
    if c == ",":
        return "v"
    if c in "=<>+-!":
        m = _TRAILING_OP.search(seg)
        op = m.group() if m is not None else c
        if len(op) > 1 and op[-1] in "+-" and not (_OP_KEEP_SIGN & set(op)):
            return "v"  # "=-": a comparison, then the literal's sign
        return "v" if op in _VALUE_AFTER_OPS else ""
    m = _TRAILING_WORD.search(seg)
    return "v" if m is not None and m.group().lower() in _VALUE_AFTER_WORDS else ""


def normalize(sql: str, *, literals: bool = True) -> tuple[str, list[Slot]] | None:
    """The normalised text of one statement and its literal slots, or None when the text
    needs the full tokenizer (dollar quotes, nested comments, several statements,
    unterminated quotes, ``U&''`` strings).

    Unlike :meth:`Scan.normalize` this keeps words and whitespace as written: a client
    sends the same statement shape with the same spelling, so keys still match, and it
    costs a few microseconds instead of a full token list.
    """
    out: list[str] = []
    slots: list[Slot] = []
    pos = 0
    ctx = ""
    in_type = False
    n = len(sql)
    search = _FAST.search
    word_char = _WORD_CHAR.match
    while True:
        m = search(sql, pos)
        if m is None:
            break
        s, e = m.span()
        c = sql[s]
        kind = ""
        seg_end = s
        if c == "'" and s and word_char(sql[s - 1]):
            prefix = sql[s - 1]
            if s >= 2 and word_char(sql[s - 2]):
                return None  # a word glued to a string: leave it to the full tokenizer
            if prefix in "eE":
                m2 = _ESTR.match(sql, s)
                if m2 is None:
                    return None
                e = m2.end()
                kind = "e"
                seg_end = s - 1
                s -= 1
            elif prefix in "bBxXnN":
                kind = "x"
                seg_end = s - 1
                s -= 1
            else:
                return None
        if seg_end > pos:
            seg = sql[pos:seg_end]
            out.append(seg)
            st = seg.rstrip()
            if st:
                if ";" in st:
                    return None
                if in_type and ")" in st:
                    in_type = False
                ctx = _context(st)
        pos = e
        if c == "'":
            if e - s < 2 or sql[e - 1] != "'":
                return None  # unterminated
            if s and sql[s - 1] == "&":
                return None  # U&'...'
            if kind == "x":
                out.append(sql[s:e])
                ctx = ""
                continue
            kind = kind or "s"
        elif c == "$":
            if s and word_char(sql[s - 1]):
                out.append(sql[s:e])  # "$" inside an identifier (price$1), not a parameter
                ctx = ""
                continue
            if e - s == 1:
                return None  # a dollar quote
            out.append(" :p" + sql[s + 1 : e] + " ")
            ctx = ""
            continue
        elif c == '"':
            if e - s == 1:
                return None
            out.append(sql[s:e])
            ctx = ""
            continue
        elif c == "-" or c == "/":
            if e - s == 1:  # a lone "/": division (or an unterminated comment)
                if sql.startswith("/*", s):
                    return None
                out.append("/")
                ctx = ""
                continue
            out.append(" ")  # a comment: the context before it still holds
            continue
        else:  # a number, unless it is the tail of a word ("t1") or glued to one ("1e")
            if (s and (word_char(sql[s - 1]) or sql[s - 1] == ".")) or (
                e < n and word_char(sql[e])
            ):
                out.append(sql[s:e])
                ctx = ""
                continue
            kind = "n"
        if literals and ctx == "v" and not in_type:
            out.append(f" :l{len(slots)} ")
            slots.append((s, e, kind))
        else:
            if ctx == "t":
                in_type = True
            out.append(sql[s:e])
        ctx = ""
    tail = sql[pos:]
    if ";" in tail and ";" in tail.rstrip().rstrip(";"):
        return None
    out.append(tail)
    return "".join(out), slots


def literal_value(sql: str, slot: Slot) -> KeyValue:
    """The value of a literal slot: ``int``/``numeric`` for numbers, ``string`` for strings."""
    start, end, kind = slot
    text = sql[start:end]
    if kind == "n":
        return number_value(text)
    if kind == "e":
        return KeyValue("string", decode_escape_string(text[2:-1]))
    return KeyValue("string", text[1:-1].replace("''", "'"))


def scan(sql: str) -> Scan:
    """Tokenize ``sql`` (never raises; ``Scan.bad`` marks unterminated quotes/comments)."""
    return Scan(sql)


def _block_comment_end(sql: str, pos: int) -> int:
    """End of the (possibly nested) block comment starting at ``pos``; -1 if unterminated."""
    depth = 1
    i = pos + 2
    while True:
        close = sql.find("*/", i)
        if close < 0:
            return -1
        opening = sql.find("/*", i)
        if 0 <= opening < close:
            depth += 1
            i = opening + 2
            continue
        depth -= 1
        i = close + 2
        if depth == 0:
            return i


def _comment_in_operator(text: str) -> int | None:
    cuts = [k for k in (text.find("--"), text.find("/*")) if k >= 0]
    return min(cuts) if cuts else None


def _trim_operator(text: str) -> str:
    """PostgreSQL: a multi-character operator cannot end in + or - unless it also contains
    one of ~ ! @ # % ^ & | ` ? (so ``=-1`` is ``=`` applied to ``-1``)."""
    if len(text) > 1 and text[-1] in "+-" and not (_OP_KEEP_SIGN & set(text)):
        text = text.rstrip("+-") or text[0]
    return text


def _hint_value(raw: str) -> KeyValue:
    if raw.startswith("'"):
        return KeyValue("string", raw[1:-1].replace("''", "'"))
    if raw.startswith('"'):
        return KeyValue("string", raw[1:-1])
    return KeyValue("untyped", raw)


def number_value(text: str) -> KeyValue:
    t = text.replace("_", "")
    try:
        if t[:2] in ("0x", "0X"):
            return KeyValue("int", int(t[2:], 16))
        if t[:2] in ("0o", "0O"):
            return KeyValue("int", int(t[2:], 8))
        if t[:2] in ("0b", "0B"):
            return KeyValue("int", int(t[2:], 2))
        if t.isdigit():
            return KeyValue("int", int(t))
        return KeyValue("numeric", Decimal(t))
    except (ValueError, InvalidOperation):
        return KeyValue("unknown", None)


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|''",
                        re.S)


def decode_escape_string(body: str) -> str:
    """The value of an ``E'...'`` literal body (PostgreSQL backslash escapes)."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "''":
            return "'"
        esc = m.group(1)
        c = esc[0]
        if c == "x":
            return chr(int(esc[1:], 16))
        if c in "01234567":
            return chr(int(esc, 8))
        if c in "uU" and len(esc) > 1:
            return chr(int(esc[1:], 16))
        return _ESCAPES.get(c, c)

    return _ESCAPE_RE.sub(repl, body)
