"""Redis ACL users with the least each service needs (docs/security.md, "Dependencies").

Every command the gateway and the dispatcher send, and every key and channel they name (keys.py):

- gateway: its agents' routing mappings (`agent:*:pod`, `agent:*:connected`): SET in a MULTI/EXEC
  (register), the two scripts of routing.py (EVALSHA, loaded with SCRIPT LOAD after SCRIPT EXISTS; inside
  them GET, SET, DEL); stream tickets' used marks (`stream-ticket-used:*`): SET NX PX; login attempt
  counters (`login-attempts:*`, throttle.py): INCRBY, DECRBY (what redis-py sends for INCR and DECR),
  PEXPIRE NX, PTTL in a MULTI/EXEC; its own pod channel (`pod:<POD_NAME>:commands`): SUBSCRIBE,
  UNSUBSCRIBE. It never publishes.
- dispatcher: the mappings: MGET (lookup) and the remove-if-owner script (GET, DEL); the pod channels:
  PUBLISH. It never subscribes and never sees a stream ticket.
- both: PING (redis-py's health checks), SELECT (the database of REDIS_URL), DISCARD (a failed pipeline).
- healthcheck (compose's container check): PING and nothing else.
- sentinel (only where Redis Sentinel watches the nodes: `sentinel auth-user`): what Redis's own
  documentation lists for a Sentinel, on its `__sentinel__:hello` channel; no keys.

The `default` user is off: a connection without a user and password can do nothing. Key and channel
patterns carry REDIS_KEY_PREFIX, so co-tenants of one Redis cannot read each other's keys. A gateway
user may be tied to one pod (compose's gateway-a and gateway-b: neither can listen on the other's channel)
or to every pod (`*`: Helm, where pod names are made by the Deployment). The Helm chart's ConfigMap
(helm/streamspace/templates/redis-acl.yaml) writes the same lines; a test compares the two.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["gateway", "dispatcher", "healthcheck", "sentinel"]

_COMMON = "+ping +select +discard"
_SCRIPTS = "+evalsha +script|load +script|exists"
COMMANDS: dict[Role, str] = {
    "gateway": f"{_COMMON} +get +set +del +incrby +decrby +pexpire +pttl +multi +exec {_SCRIPTS}"
    " +subscribe +unsubscribe",
    "dispatcher": f"{_COMMON} +get +del +mget {_SCRIPTS} +publish",
    "healthcheck": "+ping",
    "sentinel": "+multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname"
    " +client|kill +script|kill",
}


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis glob pattern (a prefix may contain *, ?, [ or \\)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass(frozen=True)
class RedisUser:
    name: str
    role: Role
    password_sha256: str  # hex SHA-256 of the password: the file never holds the password itself
    pod: str = "*"  # gateway: the POD_NAME whose channel it may subscribe to; "*": every pod

    @classmethod
    def with_password(cls, name: str, role: Role, password: str, pod: str = "*") -> RedisUser:
        return cls(name, role, hashlib.sha256(password.encode()).hexdigest(), pod)


def rules(user: RedisUser, prefix: str) -> str:
    """The ACL rules of one user, after `user <name>`."""
    p = glob_escape(prefix)
    pod = "*" if user.pod == "*" else glob_escape(user.pod)
    patterns = {
        "gateway": f"~{p}agent:* ~{p}stream-ticket-used:* ~{p}login-attempts:* &{p}pod:{pod}:commands",
        "dispatcher": f"~{p}agent:* &{p}pod:*:commands",
        "healthcheck": "",
        "sentinel": "&__sentinel__:hello",
    }[user.role]
    access = f"resetkeys resetchannels -@all {COMMANDS[user.role]} {patterns}".strip()
    return f"on #{user.password_sha256} {access}"


def acl_file(users: list[RedisUser], prefix: str = "") -> str:
    """A complete ACL file (redis-server --aclfile): the default user off, then each user."""
    lines = ["user default off resetpass resetkeys resetchannels -@all"]
    lines += [f"user {user.name} {rules(user, prefix)}" for user in users]
    return "\n".join(lines) + "\n"
