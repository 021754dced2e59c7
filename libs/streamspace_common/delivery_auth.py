"""Signed deliveries: a gateway forwards to an agent only what a dispatcher signed (§10, docs/security.md
"Deliveries").

Redis and the PostgreSQL NOTIFY channels carry hints, not authority: anyone who may PUBLISH on a pod's
channel, or NOTIFY a replica's channel, must not be able to make an agent act. So the dispatcher signs
each delivery with HMAC-SHA256 under a key shared with the gateways (DELIVERY_KEYS), and the gateway
checks it before the command reaches a socket:

- a `Delivery` (Redis path) is signed over the pod it is for, the agent, the attempt, the lease epoch,
  its expiry and the whole command (id, action, payload, session, epoch), in a canonical encoding;
- a `HandOver` (PostgreSQL path) over the pod, its expiry and its (command_id, attempt) pairs; the
  gateway then reads the rows themselves from PostgreSQL.

Refused: no signature, an unknown key id, a bad signature, another pod's, expired (or expiring
implausibly far ahead), or a replay of one already admitted (remembered until it expires). A
dispatcher's `published_at` (a latency measure) is not signed.

Keys: DELIVERY_KEYS="kid2:secret2,kid1:secret1": the first signs, every one verifies, so a key is
rotated without downtime (add the new one second everywhere, then first, then drop the old one).
Empty: every dispatcher and gateway shares one generated at first start and kept in PostgreSQL
(auth_secrets, name 'delivery_signing', key id GENERATED_KEY_ID), as AUTH_SECRET's is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import msgspec
import structlog

from .db import load_queries
from .schemas import Delivery, HandOver
from .settings import SettingsError

QUERIES = load_queries("streamspace_common", "delivery_auth.sql")
DELIVERY_TTL = 30.0  # seconds a signed delivery is valid, and how long a gateway remembers it against replays
CLOCK_SKEW = 30.0  # seconds a dispatcher's clock may run ahead of a gateway's
GENERATED_KEY_ID = "db"  # the key id of the key generated into PostgreSQL when DELIVERY_KEYS is empty
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
MIN_SECRET_BYTES = 16
log = structlog.get_logger("delivery_auth")
# Sorted map keys: the gateway re-encodes what it decoded and gets the bytes the dispatcher signed.
_canonical = msgspec.json.Encoder(order="deterministic")


@dataclass(frozen=True, slots=True)
class DeliveryKeys:
    """(key id, secret) pairs; the first signs, all verify."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def signing(self) -> tuple[str, bytes]:
        return self.keys[0]


def parse_delivery_keys(text: str) -> DeliveryKeys:
    """DELIVERY_KEYS: comma-separated `key_id:secret` pairs; SettingsError naming the variable if malformed."""
    keys: list[tuple[str, bytes]] = []
    for entry in text.split(","):
        kid, sep, secret = entry.strip().partition(":")
        if not sep or not KEY_ID.fullmatch(kid):
            raise SettingsError("DELIVERY_KEYS: each entry is key_id:secret, the key id of 1-32 of A-Z a-z 0-9 . _ -")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(f"DELIVERY_KEYS: the secret of key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes")
        if any(kid == known for known, _ in keys):
            raise SettingsError(f"DELIVERY_KEYS: key id {kid!r} is listed twice")
        keys.append((kid, secret.encode()))
    return DeliveryKeys(tuple(keys))


async def load_delivery_keys(pool: asyncpg.Pool, configured: str) -> DeliveryKeys:
    """The configured keys, else the one generated into PostgreSQL by the first process to ask."""
    if configured:
        return parse_delivery_keys(configured)
    secret: str | None = await pool.fetchval(QUERIES["delivery_key"], secrets.token_urlsafe(48))
    if secret is None:  # another process inserted it at the same moment; a new statement sees it
        secret = await pool.fetchval(QUERIES["read_delivery_key"])
    if secret is None:
        raise RuntimeError("auth_secrets has no delivery_signing row after inserting one")
    return DeliveryKeys(((GENERATED_KEY_ID, secret.encode()),))


def _delivery_message(delivery: Delivery, pod: str, expires: float) -> bytes:
    command = delivery.command
    return _canonical.encode(("delivery/1", pod, delivery.agent_id, delivery.attempt, delivery.epoch, expires, command))


def _hand_over_message(pod: str, expires: float, commands: list[tuple[str, int]]) -> bytes:
    return _canonical.encode(("hand-over/1", pod, expires, commands))


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, its padded key states hashed once: a message then costs two
    state copies and digests, about a fifth of `hmac.digest`, which sets the key up on every call."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # SHA-256's block size
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class DeliverySigner:
    """The dispatcher's side: signs with the first key."""

    def __init__(self, keys: DeliveryKeys) -> None:
        self.key_id, secret = keys.signing
        self._mac = HmacSha256(secret)

    def sign(self, delivery: Delivery, pod: str, now: float) -> Delivery:
        expires = now + DELIVERY_TTL
        signature = self._mac(_delivery_message(delivery, pod, expires))
        return msgspec.structs.replace(delivery, pod=pod, expires=expires, key_id=self.key_id, signature=signature)

    def sign_hand_over(self, pod: str, commands: list[tuple[str, int]], now: float) -> HandOver:
        expires = now + DELIVERY_TTL
        signature = self._mac(_hand_over_message(pod, expires, commands))
        return HandOver(commands=commands, pod=pod, expires=expires, key_id=self.key_id, signature=signature)


class SeenSignatures:
    """Signatures admitted and not yet expired, by the second they expire in (a replay carries the same
    expiry, so one set is looked in); a second's set is dropped once it has passed."""

    def __init__(self) -> None:
        self._by_second: dict[int, set[bytes]] = {}
        self._pruned_at = 0

    def first_time(self, signature: bytes, expires: float, now: float) -> bool:
        second = int(now)
        if second != self._pruned_at:
            self._pruned_at = second
            for gone in [s for s in self._by_second if s < second]:
                del self._by_second[gone]
        seen = self._by_second.setdefault(int(expires), set())
        key = signature[:16]
        if key in seen:
            return False
        seen.add(key)
        return True

    def __len__(self) -> int:
        return sum(len(seen) for seen in self._by_second.values())


Refused = Callable[[str, str], None]  # (path, reason): e.g. a Prometheus counter's inc


class DeliveryVerifier:
    """The gateway's side: admits a delivery or hand-over only if signed for this pod by a known key,
    unexpired and not seen before; every refusal is logged once and counted (`refused`)."""

    def __init__(self, keys: DeliveryKeys, pod: str, refused: Refused | None = None) -> None:
        self.macs = {key_id: HmacSha256(secret) for key_id, secret in keys.keys}
        self.pod = pod
        self.refused = refused
        self.seen = SeenSignatures()

    def admit(self, delivery: Delivery, now: float) -> bool:
        """A delivery from the pod's Redis channel."""
        reason = self._check(
            delivery.key_id,
            delivery.signature,
            delivery.pod,
            delivery.expires,
            lambda pod, expires: _delivery_message(delivery, pod, expires),
            now,
        )
        if reason is None:
            return True
        self._refuse(
            "redis",
            reason,
            agent_id=delivery.agent_id,
            command_id=delivery.command.command_id,
            attempt=delivery.attempt,
            key_id=delivery.key_id,
            for_pod=delivery.pod,
        )
        return False

    def admit_hand_over(self, hand_over: HandOver, now: float) -> bool:
        """A hand-over NOTIFYed on the replica's PostgreSQL channel."""
        reason = self._check(
            hand_over.key_id,
            hand_over.signature,
            hand_over.pod,
            hand_over.expires,
            lambda pod, expires: _hand_over_message(pod, expires, hand_over.commands),
            now,
        )
        if reason is None:
            return True
        command_ids = [command_id for command_id, _ in hand_over.commands[:20]]
        self._refuse(
            "postgres", reason, command_ids=command_ids, commands=len(hand_over.commands), key_id=hand_over.key_id
        )
        return False

    def malformed(self, path: str, error: str) -> None:
        """A message on the channel that is no delivery (or hand-over) at all."""
        self._refuse(path, "malformed", error=error)

    def _check(
        self,
        key_id: str | None,
        signature: bytes | None,
        pod: str | None,
        expires: float | None,
        message: Callable[[str, float], bytes],
        now: float,
    ) -> str | None:
        """None if admitted, else the reason."""
        if not key_id or not signature or pod is None or expires is None:
            return "unsigned"
        mac = self.macs.get(key_id)
        if mac is None:
            return "unknown_key"
        if not hmac.compare_digest(mac(message(pod, expires)), signature):
            return "bad_signature"
        if pod != self.pod:
            return "wrong_pod"
        if expires <= now:
            return "expired"
        if expires > now + DELIVERY_TTL + CLOCK_SKEW:
            return "expires_too_late"
        if not self.seen.first_time(signature, expires, now):
            return "replay"
        return None

    def _refuse(self, path: str, reason: str, **fields: object) -> None:
        log.warning("delivery_refused", path=path, reason=reason, pod=self.pod, **fields)
        if self.refused is not None:
            self.refused(path, reason)
