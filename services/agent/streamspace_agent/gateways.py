"""Which of GATEWAY_URLS the agent connects to next, and whether it says it is moving.

It starts on a random one of GATEWAY_URLS (AGENT_GATEWAY_START), on a failure it moves to the next; a
close with 1012 (gateway restarting) moves on at once to a random other one, so a restarted replica's
agents spread over the rest. A close with 4412 (MOVE: the replica holds more than its fair share,
docs/operations.md "Scaling the gateways") moves on at once too, announcing MOVING_HEADER: a replica at
its fair share refuses that connect with 409 and the agent tries another URL, until every other URL
refused it (or MOVE_TRIES refusals with fewer URLs, e.g. one load-balanced Service); then it connects
without the header.
"""

from __future__ import annotations

import random

from streamspace_common.schemas import CONNECT_PATH

MOVE_TRIES = 3  # refusals (409) a moving agent takes at least before it connects without MOVING_HEADER


def socket_urls(gateway_urls: str) -> list[str]:
    """`http://host:8000` -> `ws://host:8000/api/v1/agents/connect`; ws:// and wss:// are kept."""
    urls = []
    for base in filter(None, (part.strip() for part in gateway_urls.split(","))):
        base = base.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        urls.append(base if base.endswith(CONNECT_PATH) else base + CONNECT_PATH)
    if not urls:
        raise ValueError("GATEWAY_URLS names no gateway")
    return urls


class Route:
    """Which of GATEWAY_URLS to try next, and whether the agent is moving (4412) and should say so."""

    def __init__(self, count: int, random_start: bool) -> None:
        self.count = count
        self.index = random.randrange(count) if random_start else 0  # noqa: S311 (spread, not a secret)
        self.moving = False
        self.avoid: set[int] = set()
        self.refusals = 0
        self.left = self.index  # the URL it was last asked to leave (1012, 4412)

    def failed(self) -> None:
        """A failure: the next URL in order."""
        self.index = (self.index + 1) % self.count

    def elsewhere(self, moving: bool) -> None:
        """Closed by 1012 or 4412: a random other URL at once (any, with one URL)."""
        self.moving, self.avoid, self.refusals, self.left = moving, {self.index}, 0, self.index
        self.index = self.pick()

    def refused(self) -> None:
        """A moving connect refused with 409: another URL, or (tried enough) connect without moving, to any
        URL but the one it was asked to leave."""
        self.avoid.add(self.index)
        self.refusals += 1
        if self.refusals >= max(MOVE_TRIES, self.count - 1):
            self.moving = False
            self.avoid = {self.left}
        self.index = self.pick()

    def arrived(self) -> None:
        self.moving, self.avoid, self.refusals = False, set(), 0

    def pick(self) -> int:
        others = [i for i in range(self.count) if i not in self.avoid] or list(range(self.count))
        return random.choice(others)  # noqa: S311
