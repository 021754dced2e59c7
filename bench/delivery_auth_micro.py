"""Micro-benchmark of signed deliveries (docs/security.md "Deliveries"): per delivery, the dispatcher's
encode without and with signing, and the gateway's decode without and with the check (replay memory
included), over N distinct deliveries; the best of several rounds (the machine is shared).

    .venv/bin/python bench/delivery_auth_micro.py [N] [ROUNDS]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from streamspace_common.delivery_auth import DeliverySigner, DeliveryVerifier, parse_delivery_keys
from streamspace_common.schemas import Command, Delivery

POD = "gateway-a"
KEYS = parse_delivery_keys("k2:" + "s" * 48 + ",k1:" + "t" * 48)
PAYLOADS: dict[str, dict[str, Any]] = {
    "PING": {},
    "CREATE_SESSION-sized": {
        "template": "firefox",
        "user_id": "u" * 36,
        "env": {f"K{i}": "v" * 20 for i in range(10)},
        "resources": {"cpu": 1.5, "memory": "2Gi"},
    },
}


def best_microseconds(work: Callable[[], object], count: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) / count * 1e6


def measure(name: str, payload: dict[str, Any], count: int, rounds: int) -> None:
    encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder(Delivery)
    signer = DeliverySigner(KEYS)
    deliveries = [
        Delivery(
            agent_id="bench-hop",
            command=Command(command_id=f"{i:08d}-0000-0000-0000-000000000000", action="PING", payload=payload),
            attempt=1,
            epoch=3,
        )
        for i in range(count)
    ]
    now = time.time()

    def plain() -> list[bytes]:
        return [encoder.encode(msgspec.structs.replace(d, published_at=now)) for d in deliveries]

    def signed() -> list[bytes]:
        sign = signer.sign
        return [encoder.encode(msgspec.structs.replace(sign(d, POD, now), published_at=now)) for d in deliveries]

    plain_raw, signed_raw = plain(), signed()

    def decode() -> None:
        for raw in plain_raw:
            decoder.decode(raw)

    def decode_and_check() -> None:
        verifier = DeliveryVerifier(KEYS, POD)  # a fresh replay memory each round
        for raw in signed_raw:
            if not verifier.admit(decoder.decode(raw), now):
                raise AssertionError("refused")

    print(
        f"{name}: {len(plain_raw[0])} -> {len(signed_raw[0])} bytes; "
        f"dispatcher encode {best_microseconds(plain, count, rounds):.2f} -> "
        f"{best_microseconds(signed, count, rounds):.2f} us; "
        f"gateway decode {best_microseconds(decode, count, rounds):.2f} -> "
        f"{best_microseconds(decode_and_check, count, rounds):.2f} us (per delivery)"
    )


def main(count: int, rounds: int) -> None:
    for name, payload in PAYLOADS.items():
        measure(name, payload, count, rounds)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
