"""Who is asking: the ops token (a login form's signed cookie, or a Bearer header for
scripts), or a user an OIDC proxy vouches for; and CSRF tokens for the forms.

Cookies are HMAC-signed with a key derived from the ops token, so rotating the token
ends every session. A browser's forms carry a CSRF token bound to its session; Bearer
requests need none (browsers never add that header on their own).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Request

SESSION_COOKIE = "kizuna_session"
SESSION_S = 12 * 3600


class Access:
    """Authentication and CSRF checks for one dashboard."""

    def __init__(self, ops_token: str, *, user_header: str | None = None) -> None:
        self._token = ops_token
        self._key = hashlib.sha256(b"kizuna-dashboard\0" + ops_token.encode()).digest()
        self._user_header = user_header

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` is the ops token (constant time)."""
        return hmac.compare_digest(token.encode(), self._token.encode())

    def session_cookie(self, actor: str = "ops") -> str:
        """A signed session for ``actor`` that expires in :data:`SESSION_S`."""
        payload = f"{actor.replace('|', '')}|{int(time.time()) + SESSION_S}"
        return f"{payload}|{self._sign(payload)}"

    def _session_actor(self, cookie: str) -> str | None:
        actor, _, rest = cookie.partition("|")
        expires, _, signature = rest.partition("|")
        if not hmac.compare_digest(signature, self._sign(f"{actor}|{expires}")):
            return None
        return actor if expires.isdigit() and int(expires) > time.time() else None

    def actor(self, request: Request) -> str | None:
        """The authenticated caller, or None."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token and self.token_ok(token):
            return "ops-token"
        if self._user_header and request.headers.get(self._user_header):
            return request.headers[self._user_header]
        cookie = request.cookies.get(SESSION_COOKIE)
        return self._session_actor(cookie) if cookie else None

    def csrf_token(self, request: Request) -> str:
        """The token this caller's forms must send back."""
        identity = request.cookies.get(SESSION_COOKIE) or f"user:{self.actor(request)}"
        return self._sign(f"csrf|{identity}")

    def csrf_ok(self, request: Request, sent: str | None) -> bool:
        """Whether a form's CSRF token is this caller's (Bearer requests need none)."""
        if request.headers.get("authorization", "").lower().startswith("bearer "):
            return True
        return sent is not None and hmac.compare_digest(sent, self.csrf_token(request))
