"""The dashboard's sessions and CSRF tokens (`triage.admin.auth`): a session names its holder,
cannot be forged or extended, ends when its token changes, is a new one at every login (even
two in one second); a CSRF token belongs to one session; without a configured token, the
process mints one of its own."""

from __future__ import annotations

import time

from triage.admin.auth import LOCAL, SESSION_SECONDS, Tokens, client_address_of, session_parts

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"


def test_a_token_is_known_by_its_name() -> None:
    tokens = Tokens({"alice": ALICE, "bob": BOB})
    assert tokens.who(ALICE) == "alice"
    assert tokens.who(f" {BOB}\n") == "bob"
    assert tokens.who("alice") is None
    assert tokens.who("") is None


def test_a_session_names_its_holder_until_it_expires() -> None:
    tokens = Tokens({"alice": ALICE})
    now = time.time()
    session = tokens.session("alice", now=now)
    assert ALICE not in session
    assert tokens.session_holder(session, now=now + 60) == "alice"
    assert tokens.session_holder(session, now=now + SESSION_SECONDS + 1) is None


def test_a_session_cannot_be_forged_renamed_or_extended() -> None:
    tokens = Tokens({"alice": ALICE, "bob": BOB})
    _, expiry, nonce, signature = tokens.session("bob").split(".")
    assert tokens.session_holder(f"bob.{expiry}.{nonce}.{signature}") == "bob"
    assert tokens.session_holder(f"alice.{expiry}.{nonce}.{signature}") is None  # bob's signature, alice's name
    assert tokens.session_holder(f"bob.{int(expiry) + 3600}.{nonce}.{signature}") is None  # extended
    assert tokens.session_holder(f"bob.{expiry}.{nonce}x.{signature}") is None  # another nonce
    assert tokens.session_holder(f"bob.{expiry}.{signature}") is None  # the old shape, without a nonce
    assert tokens.session_holder(f"bob.{expiry}.{nonce}.{'0' * 64}") is None
    assert tokens.session_holder("nobody.99999999999.abc") is None
    assert tokens.session_holder("garbage") is None
    assert tokens.session_holder(None) is None


def test_changing_a_token_ends_its_sessions() -> None:
    session = Tokens({"alice": ALICE}).session("alice")
    assert Tokens({"alice": ALICE}).session_holder(session) == "alice"  # another web process, same token
    assert Tokens({"alice": "alice-new-token-0123456789"}).session_holder(session) is None


def test_a_csrf_token_belongs_to_one_session() -> None:
    tokens = Tokens({"alice": ALICE, "bob": BOB})
    alice, bob = tokens.session("alice"), tokens.session("bob")
    assert tokens.csrf_ok(alice, tokens.csrf(alice))
    assert not tokens.csrf_ok(alice, tokens.csrf(bob))
    assert not tokens.csrf_ok(alice, "")
    assert not tokens.csrf_ok(tokens.session("alice", now=time.time() + 1), tokens.csrf(alice))


def test_two_logins_in_one_second_are_two_sessions() -> None:
    # Given one token, and two logins at the very same instant
    tokens = Tokens({"alice": ALICE})
    now = time.time()
    # When each gets a session
    one, other = tokens.session("alice", now=now), tokens.session("alice", now=now)
    # Then they are two sessions (ending one cannot end the other), each genuine, each with its CSRF token
    assert one != other
    assert tokens.session_holder(one) == tokens.session_holder(other) == "alice"
    assert tokens.csrf(one) != tokens.csrf(other)


def test_without_a_configured_token_the_process_mints_its_own() -> None:
    # Given no token configured: each process mints one
    one, other = Tokens.mint(), Tokens.mint()
    assert not Tokens.of(None).enabled
    # Then it is a long random token, named "local", and it logs in
    token = one.local_token
    assert token is not None
    assert len(token) >= 40
    assert one.enabled
    assert one.minted
    assert one.who(token) == LOCAL
    assert other.who(token) is None
    # And its sessions are the process's own: another process's token signs others
    session = one.session(LOCAL)
    assert one.session_holder(session) == LOCAL
    assert other.session_holder(session) is None
    # And configured tokens are not minted: they have no local token to print
    assert Tokens.of(ALICE).local_token is None


def test_only_the_canonical_expiry_is_a_session() -> None:
    # Given alice's genuine session
    tokens = Tokens({"alice": ALICE})
    name, expiry, nonce, signature = tokens.session("alice").split(".")
    # When its expiry is written another way (a zero in front, a sign, a digit of another script)
    for other in ("0" + expiry, "+" + expiry, expiry + "\u00b2", "\u0661" + expiry, f" {expiry}", "0"):
        # Then it is no session (not a copy of hers, and not an error either)
        assert tokens.session_holder(f"{name}.{other}.{nonce}.{signature}") is None, other
        assert session_parts(f"{name}.{other}.{nonce}.{signature}") is None, other
    assert tokens.session_holder(f"{name}.{expiry}.{nonce}.{signature}") == "alice"


def test_a_session_with_a_superscript_digit_is_no_session_not_an_error() -> None:
    # Given a crafted cookie whose expiry ends in "²" ("²".isdigit() is true, int("…²") raises)
    crafted = "admin.1796723175\u00b2.n.sig"
    # When it is read, Then it is no session
    assert session_parts(crafted) is None
    assert Tokens({"admin": ALICE}).session_holder(crafted) is None


def test_a_client_address_is_kept_only_if_it_is_an_ip_address() -> None:
    # Given the addresses uvicorn may report (with FORWARDED_ALLOW_IPS=*, an X-Forwarded-For entry as sent)
    # Then an IPv4 or IPv6 address is kept, anything else is "-"
    assert client_address_of("203.0.113.7") == "203.0.113.7"
    assert client_address_of("2001:db8::1") == "2001:db8::1"
    assert client_address_of("1.2.3.4 outcome=ok who=admin") == "-"
    assert client_address_of("evil.example") == "-"
    assert client_address_of("") == "-"
    assert client_address_of(None) == "-"
