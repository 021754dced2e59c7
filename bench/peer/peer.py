"""The peer: what a Python team would build instead of StreamSpace's control plane (issue 15, §7).

procrastinate 3.10 (a durable job queue on PostgreSQL; its worker wakes on LISTEN/NOTIFY, concurrency
10) runs one job per command; the job hands the command to socket.io node A (python-socketio 5.x on
aiohttp) over HTTP, node A emits it to the agent's room, and socketio's AsyncRedisManager carries it to
node B, which holds the agent's socket. The agent (a socketio client) acks; node B commits the ack as
the command's completion (one UPDATE; a trigger NOTIFYs `peer_completed`).

Everything is left at the libraries' defaults but the worker's concurrency (10), as a team would:
procrastinate's own pool and LISTEN/NOTIFY, psycopg_pool's default pool size for the nodes, the
socketio client's default transports (it prints the one it ends up on: WebSocket). It runs only in
bench/.peer-venv (bench/peer/requirements.txt), never in the project's venv.

    peer.py schema                                   # procrastinate's schema + peer_commands
    peer.py node --name a --port P                   # a socket.io node
    peer.py worker --node-url http://127.0.0.1:P     # the procrastinate worker
    peer.py agent --agent-id ID --node-url URL       # the agent

Settings come from PEER_DATABASE_URL, PEER_REDIS_URL and PEER_CHANNEL (the socketio Redis channel).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import procrastinate
import psycopg_pool
import socketio
from aiohttp import web

DATABASE_URL = os.environ.get("PEER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench_peer")
REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/3")
CHANNEL = os.environ.get("PEER_CHANNEL", "socketio")
TASK_NAME = "deliver_command"
COMPLETE_SQL = "UPDATE peer_commands SET status = 'completed', completed_at = now() WHERE command_id = %s"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL))
_node_url = ""
_http: aiohttp.ClientSession | None = None


@app.task(name=TASK_NAME)
async def deliver_command(command_id: str, agent_id: str, action: str, payload: dict[str, Any]) -> None:
    """Hand the command to a socket.io node, which reaches the agent wherever it is connected."""
    global _http
    if _http is None:
        _http = aiohttp.ClientSession()
    body = {"command_id": command_id, "agent_id": agent_id, "action": action, "payload": payload}
    async with _http.post(f"{_node_url}/deliver", json=body) as response:
        response.raise_for_status()


async def apply_schema() -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            await conn.execute((Path(__file__).parent / "schema.sql").read_text())


async def run_worker(node_url: str) -> None:
    global _node_url
    _node_url = node_url
    async with app.open_async():
        await app.run_worker_async(concurrency=10)


def node_app(name: str) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(REDIS_URL, CHANNEL))
    pool = psycopg_pool.AsyncConnectionPool(DATABASE_URL, open=False)
    agents: dict[str, str] = {}  # sid -> agent id, of the sockets on this node

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        agents[sid] = auth["agent_id"]
        await sio.enter_room(sid, auth["agent_id"])

    @sio.event
    async def disconnect(sid: str, *_: Any) -> None:
        agents.pop(sid, None)

    @sio.event
    async def ack(sid: str, data: dict[str, Any]) -> None:
        async with pool.connection() as conn:
            await conn.execute(COMPLETE_SQL, (data["command_id"],))

    async def deliver(request: web.Request) -> web.Response:
        body = await request.json()
        await sio.emit("command", body, room=body["agent_id"])
        return web.json_response({"accepted": True}, status=202)

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"node": name, "agents": sorted(agents.values())})

    async def lifecycle(_: web.Application) -> Any:
        await pool.open()
        yield
        await pool.close()

    application = web.Application()
    sio.attach(application)
    application.router.add_post("/deliver", deliver)
    application.router.add_get("/readyz", ready)
    application.cleanup_ctx.append(lifecycle)
    return application


async def run_agent(agent_id: str, node_url: str) -> None:
    sio = socketio.AsyncClient()

    @sio.on("command")
    async def on_command(data: dict[str, Any]) -> None:
        await sio.emit("ack", {"command_id": data["command_id"]})

    await sio.connect(node_url, auth={"agent_id": agent_id})
    print(f"connected, transport {sio.transport()}", flush=True)  # the bench records it
    for _ in range(50):  # the default: long-polling first, upgraded to WebSocket in the background
        if sio.transport() == "websocket":
            break
        await asyncio.sleep(0.1)
    print(f"transport {sio.transport()}", flush=True)
    await sio.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema")
    node = commands.add_parser("node")
    node.add_argument("--name", required=True)
    node.add_argument("--port", type=int, required=True)
    worker = commands.add_parser("worker")
    worker.add_argument("--node-url", required=True)
    agent = commands.add_parser("agent")
    agent.add_argument("--agent-id", required=True)
    agent.add_argument("--node-url", required=True)
    args = parser.parse_args()
    if args.command == "schema":
        asyncio.run(apply_schema())
    elif args.command == "node":
        web.run_app(node_app(args.name), host="127.0.0.1", port=args.port, print=None)
    elif args.command == "worker":
        asyncio.run(run_worker(args.node_url))
    else:
        asyncio.run(run_agent(args.agent_id, args.node_url))


if __name__ == "__main__":
    main()
