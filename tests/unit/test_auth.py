"""The dashboard's sessions and CSRF tokens (`triage.admin.auth`): a session names its holder,
cannot be forged or extended, ends when its token changes; a CSRF token belongs to one session."""

from __future__ import annotations

import time

from triage.admin.auth import LOCAL, SESSION_SECONDS, Tokens

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
    _, expiry, signature = tokens.session("bob").split(".")
    assert tokens.session_holder(f"alice.{expiry}.{signature}") is None  # bob's signature, alice's name
    assert tokens.session_holder(f"bob.{int(expiry) + 3600}.{signature}") is None  # extended
    assert tokens.session_holder(f"bob.{expiry}.{'0' * 64}") is None
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


def test_without_tokens_sessions_are_local_to_the_process() -> None:
    one, other = Tokens({}), Tokens({})
    session = one.session(LOCAL)
    assert one.session_holder(session) == LOCAL
    assert other.session_holder(session) is None  # another process: its own random key
    assert one.who("anything-at-all-here") is None
