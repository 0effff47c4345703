"""The service's durable state (sqlite): accepted deliveries, the job queue, the last approved holder
of each protected alias.

A delivery is acknowledged only after its id and its job are committed in one transaction, so a
crash either loses nothing or makes MLflow retry (it gets no 2xx). A unique index allows one
validation job per model version whatever the number of deliveries; jobs left ``running`` by a
crash go back to the queue on the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from gate.errors import Refusal

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('validate', 'alias')),
    name TEXT NOT NULL, version TEXT, alias TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'skipped', 'error')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    verdict TEXT, detail TEXT, delivery_id TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS one_validation_per_version ON jobs (name, version) WHERE kind = 'validate';
CREATE TABLE IF NOT EXISTS alias_holders (name TEXT NOT NULL, alias TEXT NOT NULL, version TEXT NOT NULL,
                                          PRIMARY KEY (name, alias));
"""


class Replay(Refusal):
    """This delivery id was accepted before."""


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    kind: str
    name: str
    version: str | None
    alias: str | None
    status: str
    attempts: int
    verdict: str | None = None
    detail: str | None = None


@dataclasses.dataclass(frozen=True)
class Accepted:
    job_id: int | None  # the new job, or None
    duplicate_of: int | None  # the existing job that already covers this event


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(SCHEMA)  # executescript commits on its own: outside _tx
        finally:
            db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # one connection per transaction: the HTTP threads and the workers never share one
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def accept(self, delivery_id: str, received_at: float, replay_window_s: float, kind: str | None = None,
               name: str | None = None, version: str | None = None, alias: str | None = None) -> Accepted:
        """Record the delivery and, when ``kind`` is given, its job; raise :class:`Replay` for a delivery id
        seen before. Ids older than the window are forgotten: the timestamp check refuses those anyway."""
        with self._tx() as db:
            db.execute("DELETE FROM deliveries WHERE received_at < ?", (received_at - 2 * replay_window_s,))
            if db.execute("SELECT 1 FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone():
                raise Replay(delivery_id)
            db.execute("INSERT INTO deliveries VALUES (?, ?)", (delivery_id, received_at))
            if kind is None:
                return Accepted(None, None)
            if kind == "validate":
                existing = db.execute("SELECT id FROM jobs WHERE kind = 'validate' AND name = ? AND version = ?",
                                      (name, version)).fetchone()
            else:  # a queued check of this alias will read its holder when it runs: one is enough
                existing = db.execute("SELECT id FROM jobs WHERE kind = 'alias' AND name = ? AND alias = ? AND "
                                      "status = 'queued'", (name, alias)).fetchone()
            if existing:
                return Accepted(None, existing["id"])
            cur = db.execute("INSERT INTO jobs (kind, name, version, alias, status, created_at, delivery_id) "
                             "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                             (kind, name, version, alias, received_at, delivery_id))
            return Accepted(cur.lastrowid, None)

    def claim(self, kind: str) -> Job | None:
        """The oldest queued job of ``kind``, now marked running (atomic across threads and processes)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE kind = ? AND status = 'queued' ORDER BY id LIMIT 1",
                             (kind,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ? WHERE id = ?",
                       (time.time(), row["id"]))
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def finish(self, job_id: int, status: str, verdict: str | None = None, detail: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = ?, verdict = ?, detail = ?, finished_at = ? WHERE id = ?",
                       (status, verdict, detail, time.time(), job_id))

    def release(self, job_id: int) -> None:
        """Back to the queue without counting the attempt (a clean shutdown stopped it)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = 'queued', attempts = attempts - 1, started_at = NULL "
                       "WHERE id = ? AND status = 'running'", (job_id,))

    def requeue(self, job_id: int) -> None:
        """Back to the queue, the attempt counted (it failed)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE id = ? AND status = 'running'",
                       (job_id,))

    def recover_interrupted(self, max_attempts: int) -> tuple[list[Job], list[Job]]:
        """After a crash: running jobs go back to the queue, or to ``error`` after ``max_attempts``."""
        with self._tx() as db:
            rows = [_job(r) for r in db.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()]
            requeued = [j for j in rows if j.attempts < max_attempts]
            given_up = [j for j in rows if j.attempts >= max_attempts]
            for j in requeued:
                db.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE id = ?", (j.id,))
            for j in given_up:
                db.execute("UPDATE jobs SET status = 'error', detail = ?, finished_at = ? WHERE id = ?",
                           (f"interrupted {j.attempts} times", time.time(), j.id))
        return requeued, given_up

    def jobs(self, kind: str | None = None) -> list[Job]:
        with self._tx() as db:
            sql, args = ("SELECT * FROM jobs WHERE kind = ? ORDER BY id", (kind,)) if kind else \
                ("SELECT * FROM jobs ORDER BY id", ())
            return [_job(r) for r in db.execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            return {r["status"]: r["n"] for r in
                    db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()}

    def approved_holder(self, name: str, alias: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT version FROM alias_holders WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            return row["version"] if row else None

    def set_approved_holder(self, name: str, alias: str, version: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO alias_holders VALUES (?, ?, ?) ON CONFLICT (name, alias) DO UPDATE SET "
                       "version = excluded.version", (name, alias, version))


def _job(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["kind"], row["name"], row["version"], row["alias"], row["status"], row["attempts"],
               row["verdict"], row["detail"])
