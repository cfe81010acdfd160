"""Unit tests for proxy.wire.auth: SCRAM-SHA-256 and md5 password authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from proxy.wire.auth import (
    SCRAM_MECHANISM,
    AuthenticationFailed,
    ScramClient,
    ScramServer,
    ScramVerifier,
    make_scram_verifier,
    md5_password_hash,
    md5_verify,
    parse_scram_verifier,
)

# RFC 7677 section 3 example.
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _exchange(client: ScramClient, server: ScramServer) -> None:
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.verify_server_final(server_final)


def _rfc_server() -> ScramServer:
    verifier = make_scram_verifier(RFC_PASSWORD, salt=RFC_SALT, iterations=4096)
    return ScramServer(verifier.to_string(), nonce=RFC_SERVER_NONCE)


# --------------------------------------------------------------------------- known vector


def test_rfc7677_client_side() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_rfc7677_server_side() -> None:
    server = _rfc_server()
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_rfc7677_server_from_plain_password_uses_random_salt() -> None:
    server = ScramServer(RFC_PASSWORD, nonce=RFC_SERVER_NONCE)
    first = server.handle_client_first(RFC_CLIENT_FIRST)
    assert first.startswith(b"r=" + RFC_CLIENT_NONCE.encode() + RFC_SERVER_NONCE.encode() + b",")
    # Different salt, so the RFC's proof must not verify.
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)


# --------------------------------------------------------------------------- round trips


def test_round_trip_plain_password() -> None:
    _exchange(ScramClient("s3cret"), ScramServer("s3cret"))


def test_round_trip_verifier_string() -> None:
    verifier = make_scram_verifier("s3cret")
    _exchange(ScramClient("s3cret"), ScramServer(verifier.to_string()))


def test_round_trip_empty_scram_username_and_default_shape() -> None:
    client = ScramClient("pw")
    first = client.client_first()
    assert first.startswith(b"n,,n=,r=")
    nonce = first[len(b"n,,n=,r=") :]
    assert len(nonce) == 24 and b"," not in nonce
    server = ScramServer("pw")
    final = client.handle_server_first(server.handle_client_first(first))
    assert final.startswith(b"c=biws,r=" + nonce)
    client.verify_server_final(server.handle_client_final(final))


def test_round_trip_non_ascii_password_is_saslprepped() -> None:
    # U+00A0 (no-break space) maps to a plain space under SASLprep; U+00AD is removed.
    verifier = make_scram_verifier("pass\u00a0w\u00adord", salt=b"salt", iterations=16)
    assert verifier == make_scram_verifier("pass word", salt=b"salt", iterations=16)
    _exchange(ScramClient("pass\u00a0word"), ScramServer(verifier.to_string()))
    # NFKC: the "fi" ligature normalises to "fi".
    _exchange(ScramClient("\ufb01sh"), ScramServer("fish"))


def test_saslprep_failure_falls_back_to_raw_password() -> None:
    # U+0007 inside a non-ASCII string is prohibited, so the raw password is used.
    raw = "\u00e9\u0007"
    verifier = make_scram_verifier(raw, salt=b"salt", iterations=16)
    salted = hashlib.pbkdf2_hmac("sha256", raw.encode(), b"salt", 16)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    _exchange(ScramClient(raw), ScramServer(verifier.to_string()))


def test_wrong_password_fails() -> None:
    client = ScramClient("wrong")
    server = ScramServer(make_scram_verifier("right").to_string())
    final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(final)


def test_wrong_password_fails_with_plain_secret() -> None:
    client = ScramClient("wrong")
    server = ScramServer("right")
    final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(final)


def test_tampered_nonce_in_client_final_fails() -> None:
    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    tampered = RFC_CLIENT_FINAL.replace(b"$k0,", b"$k1,")
    with pytest.raises(AuthenticationFailed, match="nonce"):
        server.handle_client_final(tampered)


def test_client_nonce_prefix_required_in_client_final() -> None:
    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    tampered = RFC_CLIENT_FINAL.replace(b"r=rOpr", b"r=xOpr")
    with pytest.raises(AuthenticationFailed, match="nonce"):
        server.handle_client_final(tampered)


def test_tampered_server_nonce_rejected_by_client() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.client_first()
    with pytest.raises(AuthenticationFailed, match="nonce"):
        client.handle_server_first(RFC_SERVER_FIRST.replace(b"r=rOpr", b"r=xOpr"))


def test_server_nonce_must_extend_client_nonce() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.client_first()
    with pytest.raises(AuthenticationFailed, match="nonce"):
        client.handle_server_first(b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


def test_tampered_proof_fails() -> None:
    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    proof = bytearray(base64.b64decode(RFC_CLIENT_FINAL.rsplit(b"p=", 1)[1]))
    proof[0] ^= 1
    tampered = RFC_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(bytes(proof))
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(tampered)


def test_wrong_server_signature_fails() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    client.client_first()
    client.handle_server_first(RFC_SERVER_FIRST)
    bad = base64.b64encode(bytes(32))
    with pytest.raises(AuthenticationFailed, match="signature"):
        client.verify_server_final(b"v=" + bad)


def test_server_error_attribute_fails() -> None:
    client = ScramClient("pw")
    server = ScramServer("pw")
    client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_client_rejects_server_final_from_other_exchange() -> None:
    client = ScramClient("pw")
    other_client = ScramClient("pw")
    server = ScramServer("pw")
    other_server = ScramServer("pw")
    client.handle_server_first(server.handle_client_first(client.client_first()))
    other_final = other_server.handle_client_final(
        other_client.handle_server_first(
            other_server.handle_client_first(other_client.client_first())
        )
    )
    with pytest.raises(AuthenticationFailed):
        client.verify_server_final(other_final)


# --------------------------------------------------------------------------- gs2 header


def test_gs2_y_flag_accepted_and_binding_checked() -> None:
    server = _rfc_server()
    server.handle_client_first(b"y,,n=user,r=" + RFC_CLIENT_NONCE.encode())
    # The client-final c= must echo "y,," (eSws), not "n,," (biws).
    with pytest.raises(AuthenticationFailed, match="channel binding"):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_gs2_y_flag_binding_passes_then_proof_checked() -> None:
    server = _rfc_server()
    server.handle_client_first(b"y,,n=user,r=" + RFC_CLIENT_NONCE.encode())
    # c=eSws echoes "y,," so the binding check passes; the RFC proof covers c=biws and
    # therefore fails, proving c= is part of the signed AuthMessage.
    with pytest.raises(AuthenticationFailed, match="proof"):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"))


def test_channel_binding_requested_rejected() -> None:
    server = ScramServer("pw")
    with pytest.raises(AuthenticationFailed, match="channel binding"):
        server.handle_client_first(b"p=tls-server-end-point,,n=,r=abc")


def test_authzid_ignored() -> None:
    server = _rfc_server()
    first = server.handle_client_first(b"n,a=someone,n=user,r=" + RFC_CLIENT_NONCE.encode())
    assert first == RFC_SERVER_FIRST
    # c= must echo the full gs2 header, including the authzid.
    cbind = base64.b64encode(b"n,a=someone,")
    final = RFC_CLIENT_FINAL.replace(b"c=biws", b"c=" + cbind)
    # The proof in the RFC covers c=biws, so it fails on the proof, not on parsing.
    with pytest.raises(AuthenticationFailed, match="proof"):
        server.handle_client_final(final)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n,,",
        b"x,,n=,r=abc",
        b"n,,n=,",
        b"n,,r=abc",
        b"n,,n=",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=a b",
        b"n,,n=,r=",
        b"n,b=x,n=,r=abc",
        b"\xff\xfe",
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ScramServer("pw").handle_client_first(message)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!notbase64!!",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
        b"c=b!ws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"\xff,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ],
)
def test_malformed_client_final(message: bytes) -> None:
    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(message)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    ],
)
def test_malformed_server_first(message: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.client_first()
    with pytest.raises(AuthenticationFailed):
        client.handle_server_first(message)


@pytest.mark.parametrize("message", [b"", b"v=!!!", b"x=abc", b"v"])
def test_malformed_server_final(message: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username="user")
    client.client_first()
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(AuthenticationFailed):
        client.verify_server_final(message)


# --------------------------------------------------------------------------- state machine


def test_server_out_of_order_and_no_reuse() -> None:
    server = _rfc_server()
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)
    # A failed exchange stays failed.
    with pytest.raises(AuthenticationFailed):
        server.handle_client_first(RFC_CLIENT_FIRST)

    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_server_failed_final_is_terminal() -> None:
    server = _rfc_server()
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b"p=dHz", b"p=eHz"))
    # Retrying with the correct proof must not succeed.
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)


def test_client_out_of_order() -> None:
    client = ScramClient("pw")
    with pytest.raises(AuthenticationFailed):
        client.handle_server_first(RFC_SERVER_FIRST)
    client = ScramClient("pw")
    with pytest.raises(AuthenticationFailed):
        client.verify_server_final(RFC_SERVER_FINAL)


def test_invalid_injected_nonce() -> None:
    with pytest.raises(ValueError):
        ScramClient("pw", nonce="a,b")
    with pytest.raises(ValueError):
        ScramServer("pw", nonce="")


def test_scram_server_rejects_md5_secret() -> None:
    with pytest.raises(ValueError, match="md5"):
        ScramServer("md5" + "0" * 32)


# --------------------------------------------------------------------------- verifier format


def test_verifier_string_round_trip() -> None:
    verifier = make_scram_verifier("pw", salt=b"0123456789abcdef", iterations=10000)
    text = verifier.to_string()
    prefix, iter_salt, keys = text.split("$")
    assert prefix == SCRAM_MECHANISM == "SCRAM-SHA-256"
    assert iter_salt == "10000:" + base64.b64encode(b"0123456789abcdef").decode()
    stored, server = keys.split(":")
    assert base64.b64decode(stored) == verifier.stored_key
    assert base64.b64decode(server) == verifier.server_key
    assert parse_scram_verifier(text) == verifier


def test_rfc7677_verifier_keys() -> None:
    verifier = make_scram_verifier(RFC_PASSWORD, salt=RFC_SALT)
    # Independently recompute from the RFC 5802 definitions.
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert verifier == ScramVerifier(
        iterations=4096,
        salt=RFC_SALT,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.new(salted, b"Server Key", hashlib.sha256).digest(),
    )


def test_make_scram_verifier_defaults() -> None:
    a = make_scram_verifier("pw")
    b = make_scram_verifier("pw")
    assert a.iterations == 4096
    assert len(a.salt) == 16
    assert a.salt != b.salt and a.stored_key != b.stored_key
    with pytest.raises(ValueError):
        make_scram_verifier("pw", iterations=0)


def test_parse_postgres_generated_verifier_and_authenticate() -> None:
    # Shape of a verifier as Postgres writes it into pg_authid.rolpassword.
    verifier = make_scram_verifier("secret", salt=bytes(range(16)), iterations=4096)
    text = verifier.to_string()
    assert text.startswith("SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$")
    parsed = parse_scram_verifier(text)
    assert parsed == verifier
    _exchange(ScramClient("secret"), ScramServer(text))
    with pytest.raises(AuthenticationFailed):
        _exchange(ScramClient("Secret"), ScramServer(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain password",
        "md5" + "0" * 32,
        "SCRAM-SHA-256",
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$-1:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2F!dA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
    ],
)
def test_parse_scram_verifier_rejects_non_verifiers(text: str) -> None:
    assert parse_scram_verifier(text) is None


def test_plain_password_that_is_not_a_verifier_is_used_as_password() -> None:
    password = "SCRAM-SHA-256$not-really"
    assert parse_scram_verifier(password) is None
    _exchange(ScramClient(password), ScramServer(password))


# --------------------------------------------------------------------------- md5

# Computed independently with coreutils:
#   inner=$(printf postgrespostgres | md5sum | cut -d' ' -f1)
#   (printf %s "$inner"; printf '\x01\x02\x03\x04') | md5sum
PG_MD5_INNER = "3175bce1d3201d16594cebf9d7eb3f9d"
PG_MD5_RESPONSE = b"md568be9ed08db75f318087ab337aaea044"
SALT = b"\x01\x02\x03\x04"


def test_md5_password_hash_known_value() -> None:
    assert md5_password_hash("postgres", "postgres", SALT) == PG_MD5_RESPONSE


def test_md5_password_hash_formula() -> None:
    inner = hashlib.md5(b"hunter2alice").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + b"salt").hexdigest().encode()
    assert md5_password_hash("alice", "hunter2", b"salt") == expected


def test_md5_verify_plain_and_stored_secret() -> None:
    stored = "md5" + PG_MD5_INNER
    assert stored == "md5" + hashlib.md5(b"postgrespostgres").hexdigest()
    assert md5_verify("postgres", "postgres", SALT, PG_MD5_RESPONSE)
    assert md5_verify("postgres", stored, SALT, PG_MD5_RESPONSE)
    assert md5_verify("postgres", stored, SALT, PG_MD5_RESPONSE + b"\x00")
    response = md5_password_hash("bob", "pw", b"abcd")
    assert md5_verify("bob", "pw", b"abcd", response)
    assert md5_verify("bob", "md5" + hashlib.md5(b"pwbob").hexdigest(), b"abcd", response)


def test_md5_verify_rejects_wrong_inputs() -> None:
    stored = "md5" + PG_MD5_INNER
    assert not md5_verify("postgres", "wrong", SALT, PG_MD5_RESPONSE)
    assert not md5_verify("postgres", stored, b"\x01\x02\x03\x05", PG_MD5_RESPONSE)
    assert not md5_verify("other", "postgres", SALT, PG_MD5_RESPONSE)
    assert not md5_verify("postgres", stored, SALT, b"postgres")
    assert not md5_verify("postgres", stored, SALT, b"")
    # The salted response must not be accepted as a stored hash (no pass-the-hash).
    assert not md5_verify("postgres", "postgres", SALT, stored.encode())


def test_md5_verify_uppercase_hash_is_a_plain_password() -> None:
    # Postgres only treats "md5" + 32 lowercase hex digits as a stored hash.
    password = "md5" + PG_MD5_INNER.upper()
    response = md5_password_hash("u", password, SALT)
    assert md5_verify("u", password, SALT, response)


def test_md5_verify_rejects_scram_secret() -> None:
    with pytest.raises(ValueError, match="SCRAM"):
        md5_verify("u", make_scram_verifier("pw").to_string(), SALT, b"md5" + b"0" * 32)
