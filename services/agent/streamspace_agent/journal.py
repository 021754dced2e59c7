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

Where the calls run: a batch of up to INLINE_MAX results (and its confirmation) is written on the
event loop itself, on a connection that never waits for a lock (busy timeout 0) and never
checkpoints: such a commit appends a few pages to the WAL (no fsync with synchronous=NORMAL), tens of
microseconds, where handing it to a thread cost two wake-ups (the thread's, then the loop's) on a
command's way. Everything that may take long runs on the journal's own thread, on a connection of its
own: larger batches, a write or confirmation that found the database locked, pruning, and a PASSIVE
checkpoint every CHECKPOINT_EVERY results (the fsyncs of the WAL and the database file).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from streamspace_common.schemas import Result

MAX_RESULTS = 10_000  # confirmed results kept for dedupe
MAX_AGE = 7 * 24 * 3600.0  # seconds a confirmed result is kept at most
PRUNE_EVERY = 1000  # results written between two prunings
CHECKPOINT_EVERY = 250  # results written between two checkpoints (on the journal's thread)
INLINE_MAX = 64  # results a batch may hold to be written on the event loop (more: on the journal's thread)
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
        self._db: sqlite3.Connection | None = None  # the event loop's: never waits for a lock, never checkpoints
        self._thread_db: sqlite3.Connection | None = None  # the journal thread's
        self._since_prune = 0
        self._since_checkpoint = 0
        self._upkeep: asyncio.Future[None] | None = None  # a prune or checkpoint running on the thread

    def open(self) -> list[Entry]:
        """Open (creating it if needed) and return what it holds, oldest first. Blocking: call at start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the thread (CHECKPOINT_EVERY)
        db.executescript(SCHEMA)
        self._db = db
        self._prune(db)
        rows = db.execute("SELECT frame, confirmed FROM results ORDER BY finished_at, rowid").fetchall()
        entries = [Entry(_decoder.decode(frame), bool(confirmed)) for frame, confirmed in rows]
        log.info("journal_opened", path=str(self.path), results=len(entries))
        return entries

    # --- on either connection ----------------------------------------------------------------

    def _write(self, db: sqlite3.Connection, results: list[Result]) -> None:
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

    def _confirm(self, db: sqlite3.Connection, command_ids: list[str]) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany("UPDATE results SET confirmed = 1 WHERE command_id = ?", [(c,) for c in command_ids])

    def _prune(self, db: sqlite3.Connection) -> None:
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

    # --- on the journal's thread -------------------------------------------------------------

    def _on_thread(self, work: Callable[[sqlite3.Connection], None]) -> None:
        if self._thread_db is None:
            self._thread_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._thread_db.execute("PRAGMA synchronous=NORMAL")
        work(self._thread_db)

    def _keep_up(self, prune: bool) -> None:
        if prune:
            self._on_thread(self._prune)
        self._on_thread(_checkpoint)

    def _close_thread_db(self) -> None:
        if self._thread_db is not None:
            self._thread_db.close()
            self._thread_db = None

    # --- from the event loop -----------------------------------------------------------------

    async def write(self, results: list[Result]) -> None:
        """Store results (replacing an earlier result of the same command) as unconfirmed."""
        await self._run(lambda db: self._write(db, results), inline=len(results) <= INLINE_MAX)
        self._since_prune += len(results)
        self._since_checkpoint += len(results)
        if self._since_checkpoint >= CHECKPOINT_EVERY and self._upkeep is None:
            prune = self._since_prune >= PRUNE_EVERY
            self._since_checkpoint = 0
            self._since_prune = 0 if prune else self._since_prune
            self._upkeep = asyncio.get_running_loop().run_in_executor(self._thread, self._keep_up, prune)
            self._upkeep.add_done_callback(self._upkeep_done)

    async def confirm(self, command_ids: list[str]) -> None:
        await self._run(lambda db: self._confirm(db, command_ids), inline=len(command_ids) <= INLINE_MAX)

    async def _run(self, work: Callable[[sqlite3.Connection], None], inline: bool) -> None:
        """`work` in one transaction: here if `inline` and the database is not locked at this moment (the
        thread prunes), else on the journal's thread, which waits for the lock."""
        if inline:
            try:
                work(self._connection())
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
        await asyncio.get_running_loop().run_in_executor(self._thread, self._on_thread, work)

    def _upkeep_done(self, future: asyncio.Future[None]) -> None:
        self._upkeep = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("journal_upkeep_failed", error=repr(future.exception()))

    async def close(self) -> None:
        if self._upkeep is not None:
            await asyncio.gather(self._upkeep, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_thread_db)
        self._thread.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None


def _checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL into the database file as far as no reader needs it (PASSIVE: never waits, never blocks
    a writer): the fsyncs that synchronous=NORMAL leaves to checkpoints happen here, off the event loop."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
