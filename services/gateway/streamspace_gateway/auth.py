"""Who is calling: one Caller per REST request, and the checks every endpoint makes with it.

Two kinds of bearer credential, told apart by their prefix:

- a login token ``sst_<claims>.<signature>`` from POST /api/v1/auth/login: the claims (user id, role,
  expiry, password fingerprint) are signed with HMAC-SHA256, so any replica checks one without a lookup
  of the token; the user is still read (one indexed row, with whether the token was logged out) so a
  disabled user, a changed role, a changed password or a logout ends the token at once;
- an API key ``ssk_<random>``, stored as its SHA-256 like agent tokens, revocable.

The Caller carries the Credential it authenticated with, so what that credential opens (a stream)
can be ended when the credential ends (``login_refusal``, ``streamspace_gateway.revocation``).

A route says who may call it with ``api.base.ApiRoutes`` (``access="user"`` or ``"admin"``); inside a
handler the owner checks are one line: ``require_owner_or_admin(caller, row.user_id)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import msgspec
from aiohttp import web

from streamspace_common.db import load_queries
from streamspace_common.tokens import hash_token

from .errors import ApiError
from .request_context import USER_ID_KEY

QUERIES = load_queries("streamspace_gateway", "auth.sql")
TOKEN_PREFIX = "sst_"  # noqa: S105 (a prefix, not a secret)
API_KEY_PREFIX = "ssk_"
Role = Literal["admin", "user"]
Via = Literal["login", "api_key"]


class Credential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a caller authenticated with: enough to tell later whether it still admits them, and no secret."""

    kind: Via
    id: str  # login: SHA-256 of the token; api_key: the key's row id
    role: str = ""  # login: the role its claims name
    pwd: str = ""  # login: the password fingerprint its claims name
    exp: int = 0  # login: its expiry (unix seconds)


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str
    username: str
    role: Role
    credential: Credential

    @property
    def via(self) -> Via:
        return self.credential.kind

    @property
    def key_id(self) -> str | None:
        """The API key's id, when via == "api_key" (the audit trail names it)."""
        return self.credential.id if self.credential.kind == "api_key" else None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Claims(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    sub: str  # user id
    role: Role
    exp: int  # unix seconds
    # password_fingerprint() of the hash the user had at login; "" in tokens of an earlier release, which
    # are refused (a password change could not end them)
    pwd: str = ""
    # random: two logins of one user in the same second are two tokens, each logged out on its own
    jti: str = ""


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, "Authorization")


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise ApiError(403, "forbidden", "this endpoint is for administrators")


def require_owner_or_admin(caller: Caller, owner_id: str) -> None:
    if caller.user_id != owner_id and not caller.is_admin:
        raise ApiError(403, "forbidden", "this belongs to another user")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_fingerprint(secret: bytes, password_hash: str) -> str:
    """Names the password a token was issued under without revealing anything of its hash."""
    return hmac.new(secret, b"password:" + password_hash.encode(), hashlib.sha256).hexdigest()[:16]


def sign_token(secret: bytes, user_id: str, role: Role, expires: int, password: str = "") -> str:
    """`password`: the password_fingerprint() the token is bound to ("" binds it to none)."""
    claim = Claims(sub=user_id, role=role, exp=expires, pwd=password, jti=secrets.token_urlsafe(12))
    claims = _b64(msgspec.json.encode(claim))
    signature = hmac.new(secret, claims.encode(), hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}{claims}.{_b64(signature)}"


def read_token(secret: bytes, token: str, now: float) -> Claims:
    """The claims of a well-signed, unexpired token; otherwise a 401 ApiError."""
    claims, _, signature = token.removeprefix(TOKEN_PREFIX).partition(".")
    expected = hmac.new(secret, claims.encode(), hashlib.sha256).digest()
    try:
        valid = hmac.compare_digest(_unb64(signature), expected)
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise unauthorized("invalid login token")
    decoded = msgspec.json.decode(_unb64(claims), type=Claims)  # signed by us, so well-formed
    if decoded.exp <= now:
        raise unauthorized("login token expired; log in again")
    return decoded


def login_refusal(secret: bytes, credential: Credential, user: asyncpg.Record | None, revoked: bool) -> str | None:
    """Why a login token no longer admits its user, or None if it still does. `user`: the user's row
    (role, password_hash) if enabled; `revoked`: whether the token was logged out."""
    if user is None:
        return "this login token's user is disabled or deleted; log in again"
    if user["role"] != credential.role:
        return "this login token's user changed role; log in again"
    if credential.pwd != password_fingerprint(secret, user["password_hash"]):
        return "the password changed since this login token was issued (or it predates fingerprints); log in again"
    if revoked:
        return "this login token was logged out"
    return None


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    """What is shown of a key once created: enough to tell keys apart, too little to use."""
    return key[: len(API_KEY_PREFIX) + 8]


async def signing_secret(pool: asyncpg.Pool, configured: str) -> bytes:
    if configured:
        return configured.encode()
    secret: str | None = await pool.fetchval(QUERIES["signing_secret"], secrets.token_urlsafe(48))
    if secret is None:
        # Another gateway inserted it at the same moment: our INSERT waited for it and did nothing, and
        # the statement's snapshot predates that row. A new statement sees it.
        secret = await pool.fetchval(QUERIES["read_signing_secret"])
    if secret is None:
        raise RuntimeError("auth_secrets has no token_signing row after inserting one")
    return secret.encode()


class Authenticator:
    def __init__(self, pool: asyncpg.Pool, secret: bytes, ttl: float) -> None:
        self.pool = pool
        self.secret = secret
        self.ttl = ttl

    def issue(self, user_id: str, role: Role, password_hash: str) -> tuple[str, datetime]:
        expires = int(time.time() + self.ttl)
        fingerprint = password_fingerprint(self.secret, password_hash)
        return sign_token(self.secret, user_id, role, expires, fingerprint), datetime.fromtimestamp(expires, UTC)

    async def resolve(self, authorization: str | None) -> Caller:
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthorized("missing Authorization: Bearer <login token or API key>")
        if credential.startswith(API_KEY_PREFIX):
            row = await self.pool.fetchrow(QUERIES["user_for_api_key"], hash_token(credential))
            if row is None:
                raise unauthorized("unknown or revoked API key")
            return Caller(row["user_id"], row["username"], row["role"], Credential("api_key", row["key_id"]))
        if credential.startswith(TOKEN_PREFIX):
            claims = read_token(self.secret, credential, time.time())
            login = Credential("login", hash_token(credential), claims.role, claims.pwd, claims.exp)
            row = await self.pool.fetchrow(QUERIES["user_for_token"], claims.sub, login.id)
            refusal = login_refusal(self.secret, login, row, row is not None and row["revoked"])
            if refusal is not None or row is None:
                raise unauthorized(refusal or "this login token's user is disabled or deleted; log in again")
            return Caller(row["user_id"], row["username"], row["role"], login)
        raise unauthorized("unknown credential: expected a login token (sst_...) or an API key (ssk_...)")


AUTH_KEY = web.AppKey("auth", Authenticator)
_CALLER = web.RequestKey("caller", Caller)


async def caller_of(request: web.Request) -> Caller:
    """The request's caller, resolved once and kept on the request; a 401 ApiError if there is none."""
    if _CALLER in request:
        return request[_CALLER]
    caller = await request.app[AUTH_KEY].resolve(request.headers.get("Authorization"))
    request[_CALLER] = caller
    request[USER_ID_KEY] = caller.user_id  # a refusal's `request_refused` names the user (errors.py)
    return caller


async def revoke_login(pool: asyncpg.Pool | asyncpg.Connection, caller: Caller) -> None:
    """Log the caller's login token out (the NOTIFY of migration 0014 wakes every replica's stream round)."""
    login = caller.credential
    await pool.execute(QUERIES["revoke_login_token"], login.id, caller.user_id, float(login.exp))
