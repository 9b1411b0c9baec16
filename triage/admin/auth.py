"""Who is acting: the admin tokens, the dashboard's session cookie and its CSRF tokens, and the
audit log of every action.

Guarantees:
- Tokens are named: `TRIAGE_ADMIN_TOKEN` is "admin", `TRIAGE_ADMIN_TOKENS` ({"alice": "...", ...})
  adds more. `Tokens.who` compares a presented token with every configured one in constant
  time (no early exit, so the time taken does not tell which one nearly matched) and returns
  its name. With no token configured, the web process mints one at start (`Tokens.mint`,
  named "local", 256 random bits, printed once as a login link) and serves loopback only: the
  admin API, `/metrics` and the dashboard always need a token.
- A session (the dashboard's cookie) is `name.expiry.nonce.signature`, signed with a key derived
  from that name's token by PBKDF2 (200,000 rounds, once per process): it holds no token, cannot
  be forged without one, ends at its expiry, and ends at once for every holder when the token is
  changed; a stolen cookie makes guessing the token offline slow. The random nonce makes every
  login a session of its own (two logins in one second are two sessions). An expiry has one
  spelling only (ASCII digits, no leading zero): a session cannot be copied under another text
  with the same signature. Logging out ends that one session for good, by its nonce
  (`dashboard/site.py` keeps the ended ones in Redis until they expire).
- A CSRF token is bound to the session it was issued with: a form posted from another site (or
  with another session's token) is refused.
- `client_address_of` keeps a client address only if it is an IP address (else "-"): a forged
  X-Forwarded-For cannot write text into the audit log or grow the throttle's memory.
- `is_loopback` / `request_host` say whether a request came to this machine's own address
  (the no-token mode serves nothing else; the dashboard's Secure cookie needs it or HTTPS).
- `audit` writes one INFO line per action to the `triage.audit` logger: who, what, on what, and
  the outcome, with control characters escaped (a name or filter cannot forge a second line).
  Never message arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Mapping

audit_logger = logging.getLogger("triage.audit")

LOCAL = "local"
SESSION_SECONDS = 12 * 3600


class Tokens:
    """The admin tokens by name (empty: none configured; the web process then uses `Tokens.mint()`)."""

    def __init__(self, named: Mapping[str, str], *, minted: bool = False) -> None:
        self._named = {name: token.encode() for name, token in named.items()}
        self.minted = minted  # made by this process (no token configured): loopback only
        self._keys = {
            name: hashlib.pbkdf2_hmac("sha256", token, b"triage-dashboard-session", 200_000)
            for name, token in self._named.items()
        }

    @classmethod
    def of(cls, token: str | None, more: Mapping[str, str] | None = None) -> Tokens:
        """`token` (named "admin") and `more` (name -> token; "admin" is not one of them)."""
        if more and "admin" in more:
            raise ValueError("'admin' names TRIAGE_ADMIN_TOKEN: give the other tokens other names")
        return cls({**({"admin": token} if token else {}), **(more or {})})

    @classmethod
    def mint(cls) -> Tokens:
        """No token configured: one made for this process, named LOCAL (`local_token` shows it)."""
        return cls({LOCAL: secrets.token_urlsafe(32)}, minted=True)

    @property
    def local_token(self) -> str | None:
        """The token this process minted (None when tokens are configured)."""
        return self._named[LOCAL].decode() if self.minted else None

    @property
    def enabled(self) -> bool:
        return bool(self._named)

    def who(self, presented: str) -> str | None:
        """The name of the token `presented`, or None (every token is compared: constant time)."""
        given = presented.strip().encode()
        found = None
        for name, token in self._named.items():
            if hmac.compare_digest(given, token):
                found = name
        return found

    def session(self, name: str, *, now: float | None = None) -> str:
        """A new session for `name` (a configured or minted token's name): a random nonce each."""
        expiry = int((now if now is not None else time.time()) + SESSION_SECONDS)
        nonce = secrets.token_urlsafe(12)
        return f"{name}.{expiry}.{nonce}.{self._sign(name, f'session|{name}|{expiry}|{nonce}')}"

    def session_holder(self, session: str | None, *, now: float | None = None) -> str | None:
        """Who holds `session`, if it is genuine and not expired; else None."""
        parts = session_parts(session)
        if parts is None:
            return None
        name, expiry, nonce, signature = parts
        if expiry < (now if now is not None else time.time()) or name not in self._keys:
            return None
        expected = self._sign(name, f"session|{name}|{expiry}|{nonce}")
        return name if hmac.compare_digest(signature.encode(), expected.encode()) else None

    def csrf(self, session: str) -> str:
        """The CSRF token of forms shown with `session` (assumed genuine)."""
        return self._sign(session.rsplit(".", 3)[0], f"csrf|{session}")

    def csrf_ok(self, session: str, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf(session).encode())

    def _sign(self, name: str, text: str) -> str:
        key = self._keys.get(name) or secrets.token_bytes(32)  # an unknown name signs with noise: never valid
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


_EXPIRY = re.compile(r"[1-9][0-9]{0,11}")  # ASCII digits, no leading zero: one spelling per expiry


def session_parts(session: str | None) -> tuple[str, int, str, str] | None:
    """A session's name, expiry, nonce and signature, or None if it does not have that shape
    (an expiry is only its canonical spelling: no leading zero, sign, space or non-ASCII digit)."""
    parts = (session or "").rsplit(".", 3)
    if len(parts) != 4 or not all(parts) or not _EXPIRY.fullmatch(parts[1]):
        return None
    return parts[0], int(parts[1]), parts[2], parts[3]


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, without port) is this machine's own: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_address_of(host: str | None) -> str:
    """`host` (the client address uvicorn reports) if it is an IP address, else "-": with
    FORWARDED_ALLOW_IPS=* it is an X-Forwarded-For entry as sent, and may be any text."""
    try:
        return str(ipaddress.ip_address(host or ""))
    except ValueError:
        return "-"


def request_host(host_header: str | None) -> str:
    """The host of a Host header, without its port or an IPv6 address's brackets."""
    return (host_header or "").rsplit(":", 1)[0].strip("[]")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def audit(who: str, action: str, target: str, outcome: str) -> None:
    """One line of the audit log: `who=alice action=requeue target=... outcome=...`."""
    clean = [_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text) for text in (who, action, target, outcome)]
    audit_logger.info("who=%s action=%s target=%s outcome=%s", *clean)
