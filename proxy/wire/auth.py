"""Postgres password authentication (SCRAM-SHA-256 and md5), sans-IO: bytes in, bytes out.

This module owns the cryptography and message grammar of password authentication in both
directions: the proxy acting as a server towards its clients (``ScramServer``, ``md5_verify``)
and the proxy acting as a client towards a Postgres backend (``ScramClient``,
``md5_password_hash``).  It does no I/O: the caller frames the payloads into
AuthenticationSASL / SASLInitialResponse / SASLResponse / AuthenticationSASLContinue /
AuthenticationSASLFinal / PasswordMessage messages and maps ``AuthenticationFailed`` to an
ErrorResponse (SQLSTATE 28P01).

SCRAM follows RFC 5802 with SHA-256 (RFC 7677), restricted the way Postgres restricts it:
no channel binding (only ``SCRAM-SHA-256`` is advertised, never ``-PLUS``), the SCRAM user
name is ignored (Postgres takes the role from the startup packet), and passwords go through
SASLprep, falling back to the raw password when SASLprep rejects it, as Postgres does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

__all__ = [
    "SCRAM_MECHANISM",
    "AuthenticationFailed",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "make_scram_verifier",
    "md5_password_hash",
    "md5_verify",
    "parse_scram_verifier",
]

SCRAM_MECHANISM = "SCRAM-SHA-256"

_DEFAULT_ITERATIONS = 4096  # Postgres' scram_iterations default
_SALT_LEN = 16  # Postgres SCRAM_DEFAULT_SALT_LEN
_RAW_NONCE_LEN = 18  # Postgres/libpq SCRAM_RAW_NONCE_LEN
_KEY_LEN = hashlib.sha256().digest_size
_MD5_PREFIX = "md5"
_MD5_SECRET_LEN = 35  # "md5" + 32 lowercase hex digits
_HEX_LOWER = frozenset("0123456789abcdef")


class AuthenticationFailed(Exception):
    """Password authentication failed: wrong password, or a malformed/unexpected message."""


# --------------------------------------------------------------------------- helpers


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict standard base64 (with padding); None on any error."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _is_printable_nonce(value: str) -> bool:
    """RFC 5802 ``printable``: %x21-2B / %x2D-7E (visible ASCII except ',')."""
    return bool(value) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in value)


def _new_nonce() -> str:
    return _b64encode(secrets.token_bytes(_RAW_NONCE_LEN))


def _saslprep(password: str) -> str:
    """SASLprep (RFC 4013) the way Postgres' pg_saslprep applies it.

    Pure-ASCII passwords are used unchanged.  When the password contains prohibited or
    unassigned code points, or fails the bidi rules, the raw password is returned instead
    of raising, because Postgres then falls back to the raw bytes too.
    """
    if password.isascii():
        return password
    # Mapping: non-ASCII spaces -> SPACE, "commonly mapped to nothing" -> removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_a1,  # unassigned code points
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(ch) for ch in normalized for check in prohibited):
        return password
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        # RFC 3454 section 6: RandALCat strings must not contain LCat and must
        # begin and end with RandALCat.
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return password
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return password
    return normalized


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode("utf-8"), salt, iterations)


def _split_attributes(message: str) -> list[tuple[str, str]]:
    """Split ``a=x,b=y`` into ``[("a", "x"), ("b", "y")]``; AuthenticationFailed if malformed."""
    attributes: list[tuple[str, str]] = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0].lower() <= "z"):
            raise AuthenticationFailed(f"malformed SCRAM attribute {part!r}")
        attributes.append((part[0], part[2:]))
    return attributes


def _decode_message(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed("SCRAM message is not valid UTF-8") from None


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------- verifiers


@dataclass(frozen=True)
class ScramVerifier:
    """A stored SCRAM-SHA-256 secret (what Postgres keeps in ``pg_authid.rolpassword``)."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def to_string(self) -> str:
        """``SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>``."""
        return (
            f"{SCRAM_MECHANISM}${self.iterations}:{_b64encode(self.salt)}"
            f"${_b64encode(self.stored_key)}:{_b64encode(self.server_key)}"
        )


def parse_scram_verifier(text: str) -> ScramVerifier | None:
    """Parse a Postgres SCRAM-SHA-256 secret; None when ``text`` is not one (e.g. plain)."""
    parts = text.split("$")
    if len(parts) != 3 or parts[0] != SCRAM_MECHANISM:
        return None
    iter_salt = parts[1].split(":")
    keys = parts[2].split(":")
    if len(iter_salt) != 2 or len(keys) != 2:
        return None
    iter_text, salt_text = iter_salt
    if not (iter_text.isascii() and iter_text.isdigit()):
        return None
    iterations = int(iter_text)
    salt = _b64decode(salt_text)
    stored_key = _b64decode(keys[0])
    server_key = _b64decode(keys[1])
    if iterations < 1 or not salt or stored_key is None or server_key is None:
        return None
    if len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
        return None
    return ScramVerifier(iterations, salt, stored_key, server_key)


def make_scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = _DEFAULT_ITERATIONS
) -> ScramVerifier:
    """Derive a SCRAM-SHA-256 verifier from a password (random 16-byte salt by default)."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(_SALT_LEN)
    elif not salt:
        raise ValueError("salt must not be empty")
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramVerifier(
        iterations=iterations,
        salt=salt,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=_hmac(salted, b"Server Key"),
    )


# --------------------------------------------------------------------------- SCRAM server


class ScramServer:
    """Server side of SCRAM-SHA-256 (proxy authenticating a client).

    No channel binding (we advertise only SCRAM-SHA-256, not -PLUS).

    One instance per authentication exchange: ``handle_client_first`` then
    ``handle_client_final``.  Any failure is terminal; later calls raise too.
    """

    def __init__(self, secret: str, *, nonce: str | None = None) -> None:
        """``secret`` is a plain password or a SCRAM-SHA-256 verifier string.

        ``nonce`` overrides the random server nonce part (tests / known vectors only).
        An md5 secret cannot drive SCRAM and raises ValueError.
        """
        if _is_md5_secret(secret):
            raise ValueError("an md5 password hash cannot be used for SCRAM authentication")
        verifier = parse_scram_verifier(secret)
        self._verifier = verifier if verifier is not None else make_scram_verifier(secret)
        if nonce is not None and not _is_printable_nonce(nonce):
            raise ValueError("nonce must be printable ASCII without ','")
        self._server_nonce = nonce if nonce is not None else _new_nonce()
        self._state = "first"
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._combined_nonce = ""

    def handle_client_first(self, data: bytes) -> bytes:
        """Consume the client-first-message (SASLInitialResponse data); return server-first."""
        if self._state != "first":
            self._state = "failed"
            raise AuthenticationFailed("unexpected SCRAM client-first-message")
        self._state = "failed"  # until proven otherwise
        message = _decode_message(data)
        # gs2-header = gs2-cbind-flag "," [authzid] ","
        fields = message.split(",", 2)
        if len(fields) != 3:
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        cbind_flag, authzid, bare = fields
        if cbind_flag.startswith("p="):
            raise AuthenticationFailed(
                "client requires SCRAM channel binding, but it is not supported"
            )
        if cbind_flag not in ("n", "y"):
            raise AuthenticationFailed("malformed SCRAM channel-binding flag")
        if authzid and not authzid.startswith("a="):
            raise AuthenticationFailed("malformed SCRAM authorization identity")
        # The authorization identity is ignored, as is the user name below.
        attributes = _split_attributes(bare)
        if attributes and attributes[0][0] == "m":
            raise AuthenticationFailed("client requires an unsupported SCRAM extension")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        client_nonce = attributes[1][1]
        if not _is_printable_nonce(client_nonce):
            raise AuthenticationFailed("malformed SCRAM client nonce")
        # Further attributes are extensions; RFC 5802 says ignore unknown ones.
        self._gs2_header = f"{cbind_flag},{authzid},"
        self._client_first_bare = bare
        self._combined_nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._combined_nonce},s={_b64encode(v.salt)},i={v.iterations}"
        self._state = "final"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message; return server-final (``v=...``).

        Raises AuthenticationFailed on a wrong proof, nonce or channel-binding mismatch, or
        a malformed message.
        """
        if self._state != "final":
            self._state = "failed"
            raise AuthenticationFailed("unexpected SCRAM client-final-message")
        self._state = "failed"
        message = _decode_message(data)
        without_proof, sep, proof_text = message.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed("SCRAM client-final-message has no proof")
        attributes = _split_attributes(without_proof)
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise AuthenticationFailed("malformed SCRAM client-final-message")
        cbind = _b64decode(attributes[0][1])
        if cbind is None:
            raise AuthenticationFailed("malformed SCRAM channel-binding data")
        if not hmac.compare_digest(cbind, self._gs2_header.encode("utf-8")):
            raise AuthenticationFailed("SCRAM channel binding check failed")
        nonce = attributes[1][1]
        client_nonce = self._combined_nonce[: -len(self._server_nonce)]
        if not nonce.startswith(client_nonce) or not hmac.compare_digest(
            nonce.encode("utf-8"), self._combined_nonce.encode("utf-8")
        ):
            raise AuthenticationFailed("SCRAM nonce mismatch")
        proof = _b64decode(proof_text)
        if proof is None or len(proof) != _KEY_LEN:
            raise AuthenticationFailed("malformed SCRAM client proof")
        auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)
        ).encode("utf-8")
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key):
            raise AuthenticationFailed("password authentication failed (SCRAM proof mismatch)")
        self._state = "done"
        return f"v={_b64encode(_hmac(v.server_key, auth_message))}".encode("ascii")


# --------------------------------------------------------------------------- SCRAM client


class ScramClient:
    """Client side (proxy authenticating to a Postgres server).

    One instance per exchange: ``client_first``, ``handle_server_first``,
    ``verify_server_final``.  Any failure is terminal; later calls raise too.
    """

    def __init__(self, password: str, *, nonce: str | None = None, username: str = "") -> None:
        """``nonce`` / ``username`` override the random client nonce and the empty SCRAM
        user name (tests / known vectors only; Postgres ignores the SCRAM user name)."""
        if nonce is not None and not _is_printable_nonce(nonce):
            raise ValueError("nonce must be printable ASCII without ','")
        self._password = password
        self._nonce = nonce if nonce is not None else _new_nonce()
        self._client_first_bare = f"n={_escape_saslname(username)},r={self._nonce}"
        self._state = "start"
        self._server_signature = b""

    def client_first(self) -> bytes:
        """The client-first-message (SASLInitialResponse data), ``n,,n=,r=<nonce>``."""
        if self._state != "start":
            self._state = "failed"
            raise AuthenticationFailed("SCRAM client-first-message already sent")
        self._state = "first"
        return f"n,,{self._client_first_bare}".encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Consume server-first (AuthenticationSASLContinue data); return client-final."""
        if self._state != "first":
            self._state = "failed"
            raise AuthenticationFailed("unexpected SCRAM server-first-message")
        self._state = "failed"
        server_first = _decode_message(data)
        attributes = _split_attributes(server_first)
        if attributes and attributes[0][0] == "m":
            raise AuthenticationFailed("server requires an unsupported SCRAM extension")
        if len(attributes) < 3 or [key for key, _ in attributes[:3]] != ["r", "s", "i"]:
            raise AuthenticationFailed("malformed SCRAM server-first-message")
        nonce, salt_text, iter_text = (value for _, value in attributes[:3])
        if (
            not _is_printable_nonce(nonce)
            or not nonce.startswith(self._nonce)
            or len(nonce) <= len(self._nonce)
        ):
            raise AuthenticationFailed("invalid SCRAM nonce from server")
        salt = _b64decode(salt_text)
        if not salt:
            raise AuthenticationFailed("malformed SCRAM salt from server")
        if not (iter_text.isascii() and iter_text.isdigit()) or int(iter_text) < 1:
            raise AuthenticationFailed("malformed SCRAM iteration count from server")
        salted = _salted_password(self._password, salt, int(iter_text))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        server_key = _hmac(salted, b"Server Key")
        # c=biws is base64("n,,"), the gs2 header we sent.
        without_proof = f"c={_b64encode(b'n,,')},r={nonce}"
        auth_message = ",".join((self._client_first_bare, server_first, without_proof)).encode(
            "utf-8"
        )
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._state = "final"
        return f"{without_proof},p={_b64encode(proof)}".encode("ascii")

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final (AuthenticationSASLFinal data); AuthenticationFailed if wrong."""
        if self._state != "final":
            self._state = "failed"
            raise AuthenticationFailed("unexpected SCRAM server-final-message")
        self._state = "failed"
        message = _decode_message(data)
        attributes = _split_attributes(message)
        key, value = attributes[0]
        if key == "e":
            raise AuthenticationFailed(f"SCRAM authentication error from server: {value}")
        if key != "v":
            raise AuthenticationFailed("malformed SCRAM server-final-message")
        signature = _b64decode(value)
        if signature is None or not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed("invalid SCRAM server signature")
        self._state = "done"


# --------------------------------------------------------------------------- md5


def _is_md5_secret(secret: str) -> bool:
    """True for a stored Postgres md5 hash: ``md5`` + 32 lowercase hex digits."""
    return (
        len(secret) == _MD5_SECRET_LEN
        and secret.startswith(_MD5_PREFIX)
        and set(secret[len(_MD5_PREFIX) :]) <= _HEX_LOWER
    )


def _md5_salted(inner_hex: str, salt: bytes) -> bytes:
    return b"md5" + hashlib.md5(inner_hex.encode("ascii") + salt).hexdigest().encode("ascii")


def md5_password_hash(user: str, password: str, salt: bytes) -> bytes:
    """What a client sends in PasswordMessage for md5 auth (without the trailing NUL):
    ``b"md5" + hex(md5(hex(md5(password + user)) + salt))``."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
    return _md5_salted(inner, salt)


def md5_verify(user: str, secret: str, salt: bytes, response: bytes) -> bool:
    """Check a client's md5 PasswordMessage ``response`` (a trailing NUL is tolerated).

    ``secret`` is a plain password or a stored ``md5<hex>`` hash of password + user.
    A SCRAM verifier cannot verify md5 responses and raises ValueError.
    """
    if _is_md5_secret(secret):
        inner = secret[len(_MD5_PREFIX) :]
    elif parse_scram_verifier(secret) is not None:
        raise ValueError("a SCRAM verifier cannot be used for md5 authentication")
    else:
        inner = hashlib.md5((secret + user).encode("utf-8")).hexdigest()
    if response.endswith(b"\x00"):
        response = response[:-1]
    return hmac.compare_digest(_md5_salted(inner, salt), response)
