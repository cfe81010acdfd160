"""One error tree for shardwire; every error that reaches a client carries its SQLSTATE.

Errors are turned into an ErrorResponse at exactly one edge (the frontend session).
Three families stay distinct, as ARCHITECTURE.md asks:
  * client protocol / request errors raised by shardwire itself (this tree),
  * backend errors passed through verbatim (never wrapped: their bytes are forwarded),
  * our own bugs: ``InternalError`` (XX000) whose message starts with ``[BUG]``.
"""

from __future__ import annotations


class ShardwireError(Exception):
    """Base class: an error with a Postgres SQLSTATE, message, and optional detail/hint."""

    sqlstate: str = "XX000"
    severity: str = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        if sqlstate is not None:
            self.sqlstate = sqlstate


class ProtocolViolation(ShardwireError):
    """The client broke the wire protocol (bad framing, wrong message for the state)."""

    sqlstate = "08P01"
    severity = "FATAL"


class InvalidAuthorization(ShardwireError):
    """Unknown user, or authentication not possible (28000)."""

    sqlstate = "28000"
    severity = "FATAL"


class InvalidPassword(ShardwireError):
    """Password authentication failed (28P01)."""

    sqlstate = "28P01"
    severity = "FATAL"


class UnknownDatabase(ShardwireError):
    """The client asked for a database shardwire does not serve (3D000)."""

    sqlstate = "3D000"
    severity = "FATAL"


class TooManyConnections(ShardwireError):
    sqlstate = "53300"
    severity = "FATAL"


class ShardUnavailable(ShardwireError):
    """A shard could not be reached (08006) or refused the connection (08001)."""

    sqlstate = "08006"


class CheckoutTimeout(ShardwireError):
    """No server connection became free within pool.checkout_timeout."""

    sqlstate = "53300"


class FeatureNotSupported(ShardwireError):
    sqlstate = "0A000"


class AdminShutdown(ShardwireError):
    sqlstate = "57P01"
    severity = "FATAL"


class ConfigError(Exception):
    """A topology file is invalid. Not a SQL error: reported by `shardwire check` and reload."""

    def __init__(self, source: str, key_path: str, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = problem
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {problem}")


class InternalError(ShardwireError):
    """A bug in shardwire. The message always starts with [BUG] so it is never mistaken."""

    sqlstate = "XX000"

    def __init__(self, message: str, **kw: str | None) -> None:
        super().__init__(f"[BUG] {message}", **kw)  # type: ignore[arg-type]
