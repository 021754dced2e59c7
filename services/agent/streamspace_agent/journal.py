"""The agent's durable dedupe journal (§2 step 7): its results by command_id, across restarts.

A SQLite file (stdlib sqlite3, WAL, synchronous=NORMAL: a commit survives the agent's crash, not
the host's power loss) under AGENT_STATE_DIR. The executor writes every result here, in batches,
BEFORE it goes on a socket, so a result a gateway may have seen is never forgotten; it marks a
result confirmed when a gateway says it committed it. A restarted agent loads the journal and so
answers a redelivered command with its earlier result instead of running it again, and knows which
results it still has to report. A command that was running when the agent died has no entry: it
runs again on redelivery.

Bounded: confirmed results beyond the newest MAX_RESULTS, or older than MAX_AGE, are deleted.
Unconfirmed ones are never deleted (they would be lost); they are bounded by the commands received.
All SQLite calls run on one thread of their own, off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from streamspace_common.schemas import Result

MAX_RESULTS = 10_000  # confirmed results kept for dedupe
MAX_AGE = 7 * 24 * 3600.0  # seconds a confirmed result is kept at most
PRUNE_EVERY = 1000  # results written between two prunings
FILENAME = "journal.sqlite3"
log = structlog.get_logger("agent.journal")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Result)

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    command_id  TEXT PRIMARY KEY,
    frame       BLOB NOT NULL,             -- the result frame, as sent
    confirmed   INTEGER NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL              -- unix time
);
CREATE INDEX IF NOT EXISTS results_confirmed_age ON results (confirmed, finished_at);
"""


@dataclass
class Entry:
    result: Result
    confirmed: bool


def state_dir(configured: str, agent_id: str) -> Path:
    """AGENT_STATE_DIR, or ~/.local/state/streamspace-agent/<agent id> (XDG_STATE_HOME honoured), or,
    where the home directory is not writable (a container), <temp dir>/streamspace-agent/<agent id>."""
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    for base in (Path(xdg), Path(tempfile.gettempdir())):
        candidate = base / "streamspace-agent" / agent_id
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError(f"no writable state directory for agent {agent_id}: set AGENT_STATE_DIR")


class Journal:
    def __init__(self, directory: Path, max_results: int = MAX_RESULTS, max_age: float = MAX_AGE) -> None:
        self.path = directory / FILENAME
        self.max_results = max_results
        self.max_age = max_age
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: sqlite3.Connection | None = None
        self._since_prune = 0

    # --- on the journal's thread -----------------------------------------------------------

    def open(self) -> list[Entry]:
        """Open (creating it if needed) and return what it holds, oldest first. Blocking: call at start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        self._prune()
        rows = db.execute("SELECT frame, confirmed FROM results ORDER BY finished_at, rowid").fetchall()
        entries = [Entry(_decoder.decode(frame), bool(confirmed)) for frame, confirmed in rows]
        log.info("journal_opened", path=str(self.path), results=len(entries))
        return entries

    def _write(self, results: list[Result]) -> None:
        db = self._connection()
        now = time.time()
        rows = [(r.command_id, _encoder.encode(r), now) for r in results]
        with db:  # one transaction
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO results (command_id, frame, confirmed, finished_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (command_id) DO UPDATE SET frame = excluded.frame, confirmed = 0, "
                "finished_at = excluded.finished_at",
                rows,
            )
        self._since_prune += len(rows)
        if self._since_prune >= PRUNE_EVERY:
            self._prune()

    def _confirm(self, command_ids: list[str]) -> None:
        db = self._connection()
        with db:
            db.execute("BEGIN")
            db.executemany("UPDATE results SET confirmed = 1 WHERE command_id = ?", [(c,) for c in command_ids])

    def _prune(self) -> None:
        db = self._connection()
        self._since_prune = 0
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM results WHERE confirmed = 1 AND finished_at < ?", (time.time() - self.max_age,))
            db.execute(
                "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results WHERE confirmed = 1 "
                "ORDER BY finished_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.max_results,),
            )

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("journal not open")
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- from the event loop -----------------------------------------------------------------

    async def write(self, results: list[Result]) -> None:
        """Store results (replacing an earlier result of the same command) as unconfirmed."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, results)

    async def confirm(self, command_ids: list[str]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._confirm, command_ids)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)
