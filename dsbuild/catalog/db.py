"""The catalog connection: :class:`Catalog` with a typed method for every read and write dsbuild does.

Open with :meth:`Catalog.open` (read-write; migrates the schema of
:mod:`dsbuild.catalog.schema`; the caller holds the :class:`~dsbuild.catalog.lock.BuildLock`
when it writes) or :meth:`Catalog.open_readonly`. Values always go in as
parameters; DuckDB errors come out as :class:`~dsbuild.errors.DsbuildError`
(:func:`translate_error`).
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from dsbuild.catalog.lock import (RETRY_S, BuildLock, ask_holder_to_yield, holder_yields, lock_holder, retry_while_yielding,
                                  running)
from dsbuild.catalog.schema import MIGRATIONS, QUALITY_ISSUES_OF, SCHEMA_VERSION, VIEWS
from dsbuild.errors import CatalogBusy, DsbuildError, lost_stop

SMALL_INSERT = 64  # up to this many rows are inserted as parameters, more through a registered DataFrame
OPEN_WAIT_S = 10.0  # how long a writer waits for readers to let go of the file


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------- errors


_LOCK_PID = re.compile(r"PID (\d+)")


def translate_error(exc: Exception, path: Path) -> DsbuildError:
    """Turn a DuckDB exception into a readable DsbuildError."""
    text = str(exc)
    if "Conflicting lock" in text or "Could not set lock" in text:
        m = _LOCK_PID.search(text)
        who = f"process {m.group(1)}" if m else "another process"
        pid, yields, command = lock_holder(path)
        if yields:
            held = f"catalog {path} is held by the review app (`dsbuild ui`, {who}), which did not give it up when asked"
            return CatalogBusy(f"{held} — try again, or stop the app", in_app=f"{held} — stop that app to go on")
        # The lock file names the command only when its holder is the process DuckDB names (a writer opens the file
        # under the lock); any other holder — another tool, a notebook — is not guessed at.
        doing = f" ({running(command)})" if command and m and pid == m.group(1) else ""
        busy = f"catalog {path} is busy: {who} is writing it{doing} — wait for it to finish"
        return CatalogBusy(f"{busy} and try again", in_app=busy)
    if "different configuration than existing connections" in text and holder_yields(path):
        # This process's own review app holds the file read-write (a test, or a notebook running the app).
        return CatalogBusy(f"catalog {path} is held read-write by the review app in this process — try again")
    if "not a valid DuckDB database" in text or "Invalid Input Error: The file" in text:
        return DsbuildError(f"{path} is not a dsbuild catalog (not a valid DuckDB file) — point `catalog` in the manifest elsewhere")
    if "database does not exist" in text:
        return DsbuildError(f"no catalog at {path} — run `dsbuild build` first")
    return DsbuildError(f"catalog {path}: {text.splitlines()[0] if text else type(exc).__name__}")


def is_interruption(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB reporting a statement stopped by a signal or by ``interrupt()``.

    DuckDB's Python client runs the process's signal handlers itself while a statement runs; when one raises
    (Ctrl-C's :class:`KeyboardInterrupt`, SIGTERM's :class:`~dsbuild.errors.Terminated`) it keeps that exception,
    stops the statement and raises ``RuntimeError('Query interrupted')`` instead (duckdb 2.0.1, measured: a
    SIGINT 0.3 s into a long SELECT); ``connection.interrupt()`` gives ``duckdb.InterruptException``."""
    import duckdb

    return isinstance(exc, duckdb.InterruptException) or (isinstance(exc, RuntimeError)
                                                          and str(exc).startswith("Query interrupted"))


@contextmanager
def held_stops() -> Iterator[list[int]]:
    """Hold Ctrl-C and SIGTERM while DuckDB runs a statement; deliver them when the block ends.

    DuckDB's Python client runs the process's signal handlers itself while a statement runs. When one raises
    (Ctrl-C's :class:`KeyboardInterrupt`, SIGTERM's :class:`~dsbuild.errors.Terminated`) it stops the statement and
    raises ``RuntimeError('Query interrupted')`` — or hangs in ``Executor::CancelTasks`` (1 to 3 of 6–8 SIGINTs
    during a long SELECT on the main thread, duckdb 2.0.1, measured) or aborts the process ("terminate called after
    throwing…", a statement on another thread). With a handler that only records the signal, 10 of 10 statements
    ran on undisturbed. So inside this block a signal is only recorded (the list yielded: a caller may stop its
    statement with ``connection.interrupt()``, which stopped 12 of 12 within 0.02 s), and raised again, to the
    handler that was there before, when the block ends. Only on the main thread (where Python runs handlers);
    signals ignored or handled outside Python are left as they are."""
    import signal
    import threading

    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):  # SIG_IGN / SIG_DFL / a C-level handler: nothing Python would raise
            previous[signum] = handler
            signal.signal(signum, lambda s, _frame: held.append(s))
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])  # the handler that was there raises it (KeyboardInterrupt, Terminated)


class StopAwareConnection:
    """A DuckDB connection whose ``execute``/``executemany``/``register``/``unregister`` take a Ctrl-C or SIGTERM once the statement returns
    (:func:`held_stops`: dsbuild's own statements are short — a commit, an insert, a read), and raise a stop DuckDB still turned into its own error (:func:`is_interruption`) as the
    stop it was (:func:`~dsbuild.errors.lost_stop`): every stage keeps its finished work and marks itself
    interrupted on :class:`KeyboardInterrupt`, where a Ctrl-C during a commit ended a build with a traceback and
    exit 1, or hung it. Everything else is the connection's own."""

    __slots__ = ("_con",)

    def __init__(self, con) -> None:
        self._con = con

    def execute(self, *args, **kwargs):
        return self._run(self._con.execute, args, kwargs)

    def executemany(self, *args, **kwargs):
        return self._run(self._con.executemany, args, kwargs)

    def register(self, *args, **kwargs):  # a statement too (CREATE VIEW): a Ctrl-C in it was a traceback
        return self._run(self._con.register, args, kwargs)

    def unregister(self, *args, **kwargs):  # DROP VIEW — often in a ``finally`` after a stop
        return self._run(self._con.unregister, args, kwargs)

    @staticmethod
    def _run(statement, args, kwargs):
        with held_stops():
            try:
                return statement(*args, **kwargs)
            except Exception as exc:
                if is_interruption(exc):
                    raise lost_stop() from None
                raise

    def __getattr__(self, name: str):
        return getattr(self._con, name)


# --------------------------------------------------------------------------- the catalog


class Catalog:
    """A connection to the catalog with typed helpers for every read and write dsbuild does.

    Open with :meth:`open` (read-write, migrates, expects the caller to hold a
    :class:`BuildLock` when it writes) or :meth:`open_readonly`.
    """

    def __init__(self, con, path: Path, *, writable: bool) -> None:
        self.con = StopAwareConnection(con)
        self.path = path
        self.writable = writable

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> "Catalog":
        import duckdb

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A reader (`status`, `query`, another tool) holds the file for moments at a time: a writer, which
        # already holds the BuildLock, waits a little for it instead of failing its build or run.
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                con = duckdb.connect(str(path), config={"autoinstall_known_extensions": False,
                                                        "autoload_known_extensions": False})
                break
            except duckdb.Error as exc:
                busy = isinstance(translate_error(exc, path), CatalogBusy)
                if not busy or time.monotonic() > deadline:
                    raise translate_error(exc, path) from None
                if holder_yields(path):  # the review app keeps the file open between decisions: ask for it
                    ask_holder_to_yield(path)
                time.sleep(RETRY_S)
        cat = cls(con, path, writable=True)
        cat._migrate()
        return cat

    @classmethod
    def open_readonly(cls, path: Path) -> "Catalog":
        """Read-only, but not sandboxed: for dsbuild's own reads (status, export, train)."""
        import duckdb

        path = Path(path)
        if not path.exists():
            raise DsbuildError(f"no catalog at {path} — run `dsbuild build` first")

        def attempt():
            try:
                return duckdb.connect(str(path), read_only=True, config={"autoinstall_known_extensions": False,
                                                                         "autoload_known_extensions": False})
            except duckdb.Error as exc:
                raise translate_error(exc, path) from None

        # Busy because the review app holds the file between decisions: it lets go when asked.
        con = retry_while_yielding(path, attempt, is_busy=lambda e: isinstance(e, CatalogBusy))
        cat = cls(con, path, writable=False)
        version = cat._version()
        if version < SCHEMA_VERSION:
            con.close()
            raise DsbuildError(f"catalog {path} has schema version {version}, this dsbuild needs {SCHEMA_VERSION} — run `dsbuild build` once to migrate it")
        if version > SCHEMA_VERSION:
            con.close()
            raise DsbuildError(f"catalog {path} was written by a newer dsbuild (schema {version}) — upgrade dsbuild")
        return cat

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _version(self) -> int:
        try:
            row = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
        except Exception:
            return 0
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise DsbuildError(f"catalog {self.path} was written by a newer dsbuild (schema {version}) — upgrade dsbuild")
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    self.con.execute(stmt)
            for stmt in VIEWS:
                self.con.execute(stmt)
            self.con.execute("DELETE FROM meta WHERE key = 'schema_version'")
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        self.con.execute("CHECKPOINT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    # -- generic reads -------------------------------------------------------------

    def df(self, sql: str, params: list | None = None):
        """Run a dsbuild-owned SELECT and return a pandas DataFrame."""
        return self.con.execute(sql, params or []).df()

    def _one(self, sql: str, params: list | None = None) -> tuple | None:
        """The first row of a dsbuild-owned SELECT, or None.

        Always drains the result: DuckDB ≥ 2.0 refuses further work on a connection
        that still holds an unfinished result (``fetchone`` leaves one behind).
        """
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", [key])
        return row[0] if row else None

    def has_splits(self, dataset: str) -> bool:
        """Whether any item of ``dataset`` has a split (an earlier build finished its split stage)."""
        return self._one("SELECT 1 FROM items WHERE dataset = ? AND split IS NOT NULL LIMIT 1", [dataset]) is not None

    def given_splits(self, dataset: str) -> list[str]:
        """The splits an ImageFolder tree gave the accepted images of ``dataset`` (sorted; empty when none)."""
        rows = self.con.execute("SELECT DISTINCT given_split FROM items WHERE dataset = ? AND status = 'ok' "
                                "AND given_split IS NOT NULL ORDER BY 1", [dataset]).fetchall()
        return [r[0] for r in rows]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.con.execute("DELETE FROM meta WHERE key = ?", [key])
            self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, value])

    # -- builds --------------------------------------------------------------------

    def start_build(self, datasets: list[str]) -> int:
        row = self._one("SELECT coalesce(max(build_id), 0) + 1 FROM builds")
        build_id = int(row[0])
        # A build that was killed never wrote its outcome: mark it so status can say so.
        self.con.execute("UPDATE builds SET outcome = 'interrupted' WHERE outcome = 'running'")
        self.mark_runs_interrupted()
        self.con.execute(
            "INSERT INTO builds VALUES (?, ?, ?, ?, NULL, 'running', NULL)",
            [build_id, ",".join(datasets), os.getpid(), utcnow()],
        )
        return build_id

    def finish_build(self, build_id: int, outcome: str, summary: dict) -> None:
        self.con.execute(
            "UPDATE builds SET finished_at = ?, outcome = ?, summary = ? WHERE build_id = ?",
            [utcnow(), outcome, json.dumps(summary, default=str), build_id],
        )
        self.con.execute("CHECKPOINT")

    # -- items and blobs -----------------------------------------------------------

    def known_items(self, dataset: str):
        """Existing items of ``dataset``: image_id, origin, source, query, status, reason, sha256, src_size, src_mtime_ns,
        class_label, split, given_split."""
        return self.df(
            "SELECT image_id, origin, source, query, status, reason, sha256, src_size, src_mtime_ns, class_label, split, "
            "given_split "
            "FROM items WHERE dataset = ?",
            [dataset],
        )

    def upsert_items(self, rows) -> None:
        """Insert or replace items (a DataFrame with ``items`` columns; keyed by dataset, image_id).

        ``first_seen`` of an existing item is kept, so "earliest" stays earliest. So is its ``split`` when the
        new row gives none: an image verified again (a verify setting changed, its file touched or saved again,
        its URL fetched again) is the same image, and splits are stable — only ``build --resplit`` moves it
        (the build's regrouping takes the split off an image that is no longer accepted, and a duplicate group
        it joins may take it to the group's split).
        """
        if len(rows) == 0:
            return
        self.con.register("_new_items", rows)
        try:
            cols = [c for c in rows.columns]
            col_list = ", ".join(cols)
            with self.transaction():
                self.con.execute(
                    "CREATE OR REPLACE TEMP TABLE _old_first AS SELECT i.dataset, i.image_id, i.first_seen, "
                    "i.split FROM items i JOIN _new_items n USING (dataset, image_id)"
                )
                self.con.execute(
                    "DELETE FROM items WHERE (dataset, image_id) IN (SELECT (dataset, image_id) FROM _new_items)"
                )
                self.con.execute(f"INSERT INTO items ({col_list}) SELECT {col_list} FROM _new_items")
                self.con.execute(
                    "UPDATE items SET first_seen = o.first_seen FROM _old_first o "
                    "WHERE items.dataset = o.dataset AND items.image_id = o.image_id"
                )
                self.con.execute(
                    "UPDATE items SET split = o.split FROM _old_first o "
                    "WHERE items.dataset = o.dataset AND items.image_id = o.image_id AND items.split IS NULL "
                    "AND o.split IS NOT NULL"
                )
        finally:
            self.con.unregister("_new_items")

    def set_aside_items(self, dataset: str, details: dict[str, str], *, reason: str, build_id: int) -> None:
        """Mark items of ``dataset`` rejected with ``reason`` and a ``detail`` each (``details``: image_id → detail),
        out of their duplicate groups; their rows, blobs and label events stay (a build sets aside the items whose
        source left the manifest: :data:`dsbuild.sources.SOURCE_REMOVED`)."""
        if not details:
            return
        import pandas as pd

        rows = pd.DataFrame({"image_id": list(details), "detail": list(details.values())})
        self.con.register("_aside", rows)
        try:
            with self.transaction():
                self.con.execute(
                    """UPDATE items SET status = 'rejected', reason = ?, detail = a.detail, dup_group = NULL,
                           dup_of = NULL, dup_distance = NULL, conflict = false, updated_at = ?, build_id = ?
                       FROM _aside a WHERE items.dataset = ? AND items.image_id = a.image_id""",
                    [reason, utcnow(), build_id, dataset],
                )
        finally:
            self.con.unregister("_aside")

    def set_aside_matches(self, dataset: str, image_ids: list[str], *, reason: str):
        """For the items ``image_ids`` of ``dataset`` (those a build has just created), every item set aside with
        ``reason`` with the same content (``sha256``) that may be the same file: from the same ``origin``, or
        from an origin that no item supplies today (the file moved: its class folder renamed or moved), not
        succeeded already: no other item of that content, not among ``image_ids``, was first seen since the build
        that set it aside, and its review decisions were not carried over to another item (a note ``carried over
        from <id>``).
        :func:`dsbuild.carryover.pair_successors` picks one per new item.

        Columns: image_id, class_label, status, origin, sha256, given_split (of the new item: the split its source
        gives, else None); old_id, old_label (its
        ``class_label``), old_split, old_updated (when it was last written: set aside), old_origin, old_build
        (the build that set it aside). No row for an
        item without a match."""
        return self.df(
            """SELECT n.image_id, n.class_label, n.status, n.origin, n.sha256, n.given_split, o.image_id AS old_id,
                      o.class_label AS old_label, o.split AS old_split, o.updated_at AS old_updated,
                      o.origin AS old_origin, o.build_id AS old_build
               FROM items n JOIN items o ON o.dataset = n.dataset AND o.sha256 = n.sha256 AND o.image_id <> n.image_id
               WHERE n.dataset = ? AND n.image_id IN (SELECT unnest(?)) AND o.reason = ?
                 AND (o.origin = n.origin
                      OR (NOT EXISTS (SELECT 1 FROM items s WHERE s.dataset = o.dataset AND s.origin = o.origin
                                                              AND s.reason IS DISTINCT FROM ?)
                          AND NOT EXISTS (SELECT 1 FROM items s WHERE s.dataset = o.dataset AND s.sha256 = o.sha256
                                            AND s.reason IS DISTINCT FROM ? AND s.image_id NOT IN (SELECT unnest(?))
                                            AND s.first_seen >= (SELECT min(b.started_at) FROM builds b
                                                                 WHERE b.build_id = o.build_id))
                          AND NOT EXISTS (SELECT 1 FROM label_events e
                                          WHERE e.dataset = o.dataset AND e.image_id <> n.image_id
                                            AND e.note LIKE 'carried over from ' || o.image_id || ' %')))
               ORDER BY n.image_id, o.updated_at DESC, o.image_id""",
            [dataset, list(image_ids), reason, reason, reason, list(image_ids)],
        )

    def set_aside_among(self, dataset: str, *, reason: str, image_ids: list[str], labels: list[str]) -> list[str]:
        """The items of ``dataset`` set aside with ``reason`` that are among ``image_ids`` or came under one of
        ``labels`` (their ``class_label``), sorted: those whose picture may have come back under another class."""
        return [r[0] for r in self.con.execute(
            "SELECT image_id FROM items WHERE dataset = ? AND reason = ? AND (image_id IN (SELECT unnest(?)) "
            "OR class_label IN (SELECT unnest(?))) ORDER BY 1",
            [dataset, reason, list(image_ids), list(labels)]).fetchall()]

    def same_content_items(self, dataset: str, image_ids: list[str], *, except_reason: str) -> list[str]:
        """The items of ``dataset`` not set aside with ``except_reason`` whose content (sha256) is that of one of
        ``image_ids``, sorted: the candidates :meth:`set_aside_matches` pairs with them."""
        return [r[0] for r in self.con.execute(
            "SELECT image_id FROM items WHERE dataset = ? AND reason IS DISTINCT FROM ? AND sha256 IN "
            "(SELECT sha256 FROM items WHERE dataset = ? AND image_id IN (SELECT unnest(?))) ORDER BY 1",
            [dataset, except_reason, dataset, list(image_ids)]).fetchall()]

    def source_labels(self, dataset: str, *, set_aside: str) -> list[str]:
        """The labels the sources of ``dataset`` give today: ``class_label`` of its items not set aside with the
        reason ``set_aside`` (whatever their status), sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT class_label FROM items WHERE dataset = ? AND reason IS DISTINCT FROM ? ORDER BY 1",
            [dataset, set_aside]).fetchall()]

    def class_history(self, dataset: str, *, set_aside: str):
        """Every ``class_label`` an item of ``dataset`` came under, with ``first_build`` (the build during which its
        first item was first seen: the latest build started by then; 0 before any) and ``gone_build`` (when every item
        of it is set aside with ``set_aside``: the latest build that set one aside; else NULL). DataFrame
        class_label, first_build, gone_build, ordered by first_build, class_label."""
        return self.df(
            """WITH c AS (SELECT class_label, min(first_seen) AS seen, bool_and(reason IS NOT DISTINCT FROM ?) AS gone,
                                 max(CASE WHEN reason IS NOT DISTINCT FROM ? THEN build_id END) AS aside
                          FROM items WHERE dataset = ? AND class_label IS NOT NULL GROUP BY class_label)
               SELECT class_label,
                      coalesce((SELECT max(b.build_id) FROM builds b WHERE b.started_at <= c.seen), 0) AS first_build,
                      CASE WHEN gone THEN aside END AS gone_build
               FROM c ORDER BY first_build, class_label""", [set_aside, set_aside, dataset])

    def set_aside_labels(self, dataset: str, *, reason: str) -> list[str]:
        """``class_label`` of the items of ``dataset`` set aside with ``reason`` (the classes they came under), sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT class_label FROM items WHERE dataset = ? AND reason = ? AND class_label IS NOT NULL "
            "ORDER BY 1", [dataset, reason]).fetchall()]

    def relabelled_to(self, dataset: str, labels: list[str], *, except_reason: str):
        """Images of ``dataset`` whose current label is one of ``labels`` by a review (label ≠ original_label),
        leaving out those set aside with ``except_reason``: DataFrame image_id, label, status, by image_id."""
        return self.df(
            """SELECT image_id, label, status FROM images
               WHERE dataset = ? AND label IN (SELECT unnest(?)) AND label IS DISTINCT FROM original_label
                 AND reason IS DISTINCT FROM ? ORDER BY image_id""", [dataset, list(labels), except_reason])

    def neighbour_coverage(self, dataset: str) -> tuple[int, int, int]:
        """``(accepted, with neighbours, with an outlier score)``: the accepted images (ok, duplicate) of
        ``dataset``, those with rows in the ``neighbours`` view, and those with an ``outlier_score``."""
        row = self.con.execute(
            """SELECT count(*), count(*) FILTER (WHERE image_id IN (SELECT image_id FROM neighbours WHERE dataset = ?)),
                      count(outlier_score)
               FROM images WHERE dataset = ? AND status IN ('ok', 'duplicate')""", [dataset, dataset]).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def any_grouped(self, dataset: str, image_ids: set[str]) -> bool:
        """Whether one of ``image_ids`` of ``dataset`` is in a duplicate group (``dup_group`` set)."""
        return bool(self.con.execute("SELECT count(*) FROM items WHERE dataset = ? AND dup_group IS NOT NULL "
                                     "AND image_id IN (SELECT unnest(?))", [dataset, sorted(image_ids)]).fetchone()[0])

    def inherit_splits(self, dataset: str, splits: dict[str, str]) -> int:
        """Give items of ``dataset`` without a split the split of ``splits`` (image_id → split); return how many
        took one. The build's regrouping keeps them (stable splits)."""
        if not splits:
            return 0
        import pandas as pd

        rows = pd.DataFrame({"image_id": list(splits), "split": list(splits.values())})
        self.con.register("_inherit", rows)
        try:
            with self.transaction():
                changed = self.con.execute(
                    """UPDATE items SET split = s.split FROM _inherit s
                       WHERE items.dataset = ? AND items.image_id = s.image_id AND items.split IS NULL""",
                    [dataset]).fetchone()
        finally:
            self.con.unregister("_inherit")
        return int(changed[0]) if changed else 0

    def insert_blobs(self, rows) -> None:
        """Insert blobs not yet known (a DataFrame with ``blobs`` columns)."""
        if len(rows) == 0:
            return
        self.con.register("_new_blobs", rows)
        try:
            cols = ", ".join(rows.columns)
            with self.transaction():
                self.con.execute(
                    f"INSERT INTO blobs ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON (sha256) * FROM _new_blobs) n "
                    "WHERE n.sha256 NOT IN (SELECT sha256 FROM blobs)"
                )
        finally:
            self.con.unregister("_new_blobs")

    #: What verification reads from a blob's content (:func:`dsbuild.rows.blob_row`): refreshed when dsbuild's checks
    #: changed (:meth:`refresh_blobs`).
    VERIFIED_BLOB_COLUMNS = ("bytes", "format", "width", "height", "mode", "frames", "pixel_sha", "q_dark", "q_light",
                             "q_blurry", "q_low_information", "q_grayscale", "q_odd_aspect_ratio")

    def refresh_blobs(self, rows) -> int:
        """Write what a verification read (:data:`VERIFIED_BLOB_COLUMNS`) into the known blobs of ``rows`` (a
        DataFrame with ``blobs`` columns): a blob verified again under a newer verifier revision may read other
        pixels (16-bit greyscale) or frames. A blob whose pixels changed loses its near-duplicate signals
        (``phash_views``, ``eff_side``: computed again from them). Returns how many blobs changed."""
        if len(rows) == 0:
            return 0
        cols = [c for c in self.VERIFIED_BLOB_COLUMNS if c in rows.columns]
        self.con.register("_fresh_blobs", rows)
        try:
            with self.transaction():
                sets = ", ".join(f"{c} = n.{c}" for c in cols)
                differs = " OR ".join(f"blobs.{c} IS DISTINCT FROM n.{c}" for c in cols)
                changed = self.con.execute(
                    f"""UPDATE blobs SET {sets},
                           phash_views = CASE WHEN blobs.pixel_sha IS DISTINCT FROM n.pixel_sha THEN NULL
                                              ELSE blobs.phash_views END,
                           eff_side = CASE WHEN blobs.pixel_sha IS DISTINCT FROM n.pixel_sha THEN NULL
                                           ELSE blobs.eff_side END
                        FROM (SELECT DISTINCT ON (sha256) * FROM _fresh_blobs) n
                        WHERE blobs.sha256 = n.sha256 AND ({differs})""").fetchone()
        finally:
            self.con.unregister("_fresh_blobs")
        return int(changed[0]) if changed else 0

    def blob_pixel_keys(self) -> dict[str, str | None]:
        """sha256 → ``pixel_sha`` of every stored blob (with the sha256, the key of its embedding)."""
        return dict(self.con.execute("SELECT sha256, pixel_sha FROM blobs").fetchall())

    def current_pixel_keys(self) -> dict[str, str | None]:
        """sha256 → ``pixel_sha`` of every blob whose near-duplicate signals were computed from the pixels verification
        reads now (:meth:`refresh_blobs` clears them when a re-check reads other pixels): what the embedding cache's
        rows written before they named their pixels are adopted under (:meth:`dsbuild.model.embeddings.FeatureCache.adopt`)."""
        rows = self.con.execute("SELECT sha256, pixel_sha FROM blobs WHERE phash_views IS NOT NULL "
                                "AND eff_side IS NOT NULL").fetchall()
        return dict(rows)

    def stored_blobs(self, shas) -> dict[str, str]:
        """sha256 → store path of the blobs of ``shas`` whose stored file exists."""
        shas = [s for s in set(shas) if isinstance(s, str)]
        if not shas:
            return {}
        rows = self.con.execute("SELECT sha256, path FROM blobs WHERE sha256 IN (SELECT unnest(?))", [shas]).fetchall()
        return {sha: path for sha, path in rows if path is not None and os.path.exists(path)}

    def dataset_items(self, dataset: str):
        """Every item of ``dataset`` with what dedup and split need (joined with blobs).

        ``label`` is the current label (after review); ``removed`` is true for an image a reviewer removed.
        """
        return self.df(
            """SELECT i.image_id, i.origin, i.class_label, i.status, i.reason, i.detail, i.sha256, i.split, i.given_split, i.phash,
                      i.dup_group, i.first_seen, b.pixel_sha, b.width, b.height, b.path, b.phash_views, b.eff_side,
                      b.q_dark, b.q_light, b.q_blurry, b.q_low_information, b.q_grayscale, b.q_odd_aspect_ratio,
                      coalesce(e.new_label, i.class_label) AS label,
                      coalesce(e.new_status = 'rejected', false) AS removed
               FROM items i LEFT JOIN blobs b USING (sha256)
               LEFT JOIN latest_events e USING (dataset, image_id)
               WHERE i.dataset = ? ORDER BY i.first_seen, i.image_id""",
            [dataset],
        )

    def update_dedup_and_splits(self, dataset: str, rows) -> int:
        """Write status/reason/dup columns/split/leak_with for items of ``dataset`` (a DataFrame keyed by image_id);
        return how many items changed."""
        if len(rows) == 0:
            return 0
        # ``leak_with`` comes comma-joined (:func:`dsbuild.dedup.grouping.regroup`); the catalog keeps a LIST.
        leak_with = "CASE WHEN u.leak_with IS NULL THEN NULL ELSE string_split(u.leak_with, ',') END"
        self.con.register("_upd", rows)
        try:
            with self.transaction():
                changed = self.con.execute(
                    f"""UPDATE items SET status = u.status, reason = u.reason, detail = u.detail,
                           dup_group = u.dup_group, dup_of = u.dup_of, dup_distance = u.dup_distance,
                           conflict = u.conflict, split = u.split, quality_flags = u.quality_flags,
                           quality_issues = {QUALITY_ISSUES_OF.format(flags="u.quality_flags")},
                           q_odd_size = u.q_odd_size, leak_with = {leak_with}, updated_at = ?
                       FROM _upd u WHERE items.dataset = ? AND items.image_id = u.image_id
                         AND (items.status IS DISTINCT FROM u.status OR items.reason IS DISTINCT FROM u.reason
                              OR items.quality_flags IS DISTINCT FROM u.quality_flags
                              OR items.q_odd_size IS DISTINCT FROM u.q_odd_size
                              OR items.dup_group IS DISTINCT FROM u.dup_group OR items.split IS DISTINCT FROM u.split
                              OR items.conflict IS DISTINCT FROM u.conflict OR items.dup_of IS DISTINCT FROM u.dup_of
                              OR items.detail IS DISTINCT FROM u.detail
                              OR items.leak_with IS DISTINCT FROM {leak_with})""",
                    [utcnow(), dataset],
                ).fetchone()
        finally:
            self.con.unregister("_upd")
        return int(changed[0]) if changed else 0

    def grouping_outputs(self, dataset: str):
        """``(items, knn)``: what a regrouping of ``dataset`` writes that :meth:`dataset_items` does not read back —
        each item's dup_of, dup_distance, conflict, quality_flags, q_odd_size, leak_with (comma-joined),
        outlier_score, is_outlier, and the ``knn`` rows — ordered, so that equal states give equal frames
        (:mod:`dsbuild.dedup.reuse` fingerprints them)."""
        items = self.df(
            """SELECT image_id, dup_of, dup_distance, conflict, quality_flags, q_odd_size,
                      array_to_string(leak_with, ',') AS leak_with, outlier_score, is_outlier
               FROM items WHERE dataset = ? ORDER BY image_id""", [dataset])
        knn = self.df("SELECT image_id, rank, neighbour_id, similarity FROM knn WHERE dataset = ? "
                      "ORDER BY image_id, rank, neighbour_id", [dataset])
        return items, knn

    def drop_meta(self, key: str) -> None:
        """Forget the meta value of ``key`` (nothing when there is none)."""
        with self.transaction():
            self.con.execute("DELETE FROM meta WHERE key = ?", [key])

    def update_groups(self, dataset: str, rows) -> int:
        """Write the duplicate-group columns (status, reason, dup_group, dup_of, dup_distance, conflict) of items of
        ``dataset`` (a DataFrame keyed by image_id: :func:`dsbuild.dedup.reviewed.regroup_reviewed`); splits and
        quality columns stay. Returns how many items changed."""
        if len(rows) == 0:
            return 0
        self.con.register("_grp", rows)
        try:
            with self.transaction():
                changed = self.con.execute(
                    """UPDATE items SET status = u.status, reason = u.reason, dup_group = u.dup_group,
                           dup_of = u.dup_of, dup_distance = u.dup_distance, conflict = u.conflict, updated_at = ?
                       FROM _grp u WHERE items.dataset = ? AND items.image_id = u.image_id
                         AND (items.status IS DISTINCT FROM u.status OR items.reason IS DISTINCT FROM u.reason
                              OR items.dup_group IS DISTINCT FROM u.dup_group OR items.dup_of IS DISTINCT FROM u.dup_of
                              OR items.dup_distance IS DISTINCT FROM u.dup_distance
                              OR items.conflict IS DISTINCT FROM u.conflict)""",
                    [utcnow(), dataset],
                ).fetchone()
        finally:
            self.con.unregister("_grp")
        return int(changed[0]) if changed else 0

    def set_blob_signals(self, rows) -> None:
        """Write ``phash_views`` and ``eff_side`` of blobs (a DataFrame: sha256, phash_views, eff_side)."""
        if len(rows) == 0:
            return
        self.con.register("_sig", rows)
        try:
            with self.transaction():
                self.con.execute("UPDATE blobs SET phash_views = s.phash_views, eff_side = s.eff_side "
                                 "FROM _sig s WHERE blobs.sha256 = s.sha256")
        finally:
            self.con.unregister("_sig")

    def set_outliers(self, dataset: str, rows) -> None:
        """Write ``outlier_score``/``is_outlier`` of a dataset's items (DataFrame: image_id, outlier_score, is_outlier);
        items not in ``rows`` get NULL."""
        self.con.register("_out", rows)
        try:
            with self.transaction():
                self.con.execute("UPDATE items SET outlier_score = NULL, is_outlier = NULL WHERE dataset = ? "
                                 "AND (outlier_score IS NOT NULL OR is_outlier IS NOT NULL)", [dataset])
                if len(rows):
                    self.con.execute("UPDATE items SET outlier_score = o.outlier_score, is_outlier = o.is_outlier "
                                     "FROM _out o WHERE items.dataset = ? AND items.image_id = o.image_id", [dataset])
        finally:
            self.con.unregister("_out")

    def set_neighbours(self, dataset: str, rows) -> None:
        """Replace ``dataset``'s rows of the ``knn`` table (DataFrame: image_id, rank, neighbour_id, similarity)."""
        self.con.register("_knn", rows)
        try:
            with self.transaction():
                self.con.execute("DELETE FROM knn WHERE dataset = ?", [dataset])
                if len(rows):
                    self.con.execute("INSERT INTO knn SELECT ?, image_id, rank, neighbour_id, similarity FROM _knn",
                                     [dataset])
        finally:
            self.con.unregister("_knn")

    def outliers(self, dataset: str):
        """Scored images of ``dataset``: image_id, path, label, status, outlier_score, is_outlier (most unusual first)."""
        return self.df("SELECT image_id, path, origin, label, status, outlier_score, is_outlier FROM images "
                       "WHERE dataset = ? AND outlier_score IS NOT NULL ORDER BY outlier_score, image_id", [dataset])

    def insert_fetches(self, rows) -> None:
        if len(rows) == 0:
            return
        self.con.register("_new_fetches", rows)
        try:
            cols = ", ".join(rows.columns)
            with self.transaction():
                self.con.execute(f"INSERT INTO fetches ({cols}) SELECT {cols} FROM _new_fetches")
        finally:
            self.con.unregister("_new_fetches")

    # -- links and searches (web sources) ----------------------------------------

    def searched(self, dataset: str, label: str, engine: str, query: str) -> int | None:
        """How many links a completed search of this query asked for, or None if never completed."""
        row = self._one(
            "SELECT max(wanted) FROM searches WHERE dataset = ? AND label = ? AND engine = ? AND query = ? "
            "AND outcome NOT IN ('blocked', 'error')",
            [dataset, label, engine, query],
        )
        return None if row is None or row[0] is None else int(row[0])

    def empty_searches(self, dataset: str) -> set[tuple[str, str, str]]:
        """(label, engine, query) of every query of ``dataset`` whose latest search found no results (``no_results``):
        searched again by ``build --retry-failed`` (an engine that was empty or answered an unreadable page then)."""
        rows = self.con.execute(
            """SELECT label, engine, query FROM (
                   SELECT label, engine, query, outcome,
                          row_number() OVER (PARTITION BY label, engine, query ORDER BY searched_at DESC) AS rn
                   FROM searches WHERE dataset = ?) WHERE rn = 1 AND outcome = 'no_results'""",
            [dataset],
        ).fetchall()
        return {(r[0], r[1], r[2]) for r in rows}

    def record_search(self, *, dataset: str, label: str, engine: str, query: str, wanted: int,
                      links: list[dict], pages: int, outcome: str, message: str) -> None:
        """Store a query's links and how it ended, in one transaction (links first, then the search row)."""
        import pandas as pd

        now = utcnow()
        with self.transaction():
            self.con.execute("DELETE FROM links WHERE dataset = ? AND label = ? AND engine = ? AND query = ?",
                             [dataset, label, engine, query])
            if links:
                df = pd.DataFrame(links)
                df["dataset"], df["label"], df["engine"], df["query"], df["discovered_at"] = dataset, label, engine, query, now
                self.con.register("_links", df)
                try:
                    self.con.execute("INSERT INTO links (dataset, label, url, engine, query, rank, page_url, discovered_at) "
                                     "SELECT dataset, label, url, engine, query, rank, page_url, discovered_at FROM _links")
                finally:
                    self.con.unregister("_links")
            self.con.execute("INSERT INTO searches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [dataset, label, engine, query, wanted, len(links), pages, outcome, message, now])

    def dataset_links(self, dataset: str):
        """Every discovered link of ``dataset`` (first discovery of each (label, url)), in discovery order."""
        return self.df(
            """SELECT label, url, engine, query, rank, page_url FROM (
                   SELECT *, row_number() OVER (PARTITION BY label, url ORDER BY discovered_at, engine, query, rank) AS rn
                   FROM links WHERE dataset = ?) WHERE rn = 1
               ORDER BY discovered_at, engine, query, rank""",
            [dataset],
        )

    def fetched_ok(self, urls: list[str]):
        """Latest successful fetch of each URL in ``urls`` whose stored file still exists: url → ``(url, sha256, store
        path, http status, body bytes, content type, final url, noai, redirects)`` (noai, redirects None: fetched before they were recorded)."""
        if not urls:
            return {}
        rows = self.con.execute(
            """SELECT f.url, f.sha256, b.path, f.http_status, f.bytes, f.content_type, f.final_url, f.noai, f.redirects
               FROM fetches f JOIN blobs b USING (sha256)
               WHERE f.outcome = 'ok' AND f.url IN (SELECT unnest(?))""",
            [urls],
        ).fetchall()
        return {r[0]: r for r in rows if os.path.exists(r[2])}

    def blob_record(self, sha256: str):
        """The stored blob ``sha256`` as an accepted :class:`~dsbuild.verify.analyze.ImageRecord`, or None when no
        blob ``sha256`` was stored (an item rejected on verification has a sha256 but no blob)."""
        from dsbuild.verify.analyze import ImageRecord

        row = self._one(
            "SELECT b.path, b.bytes, b.format, b.width, b.height, b.mode, b.frames, b.pixel_sha, "
            "(SELECT any_value(phash) FROM items WHERE sha256 = b.sha256 AND phash IS NOT NULL) "
            "FROM blobs b WHERE sha256 = ?",
            [sha256],
        )
        if row is None:
            return None
        path, size, fmt, w, h, mode, frames, pix, ph = row
        return ImageRecord(ok=True, sha256=sha256, bytes=size, format=fmt, width=w, height=h, mode=mode,
                           frames=frames or 1, pixel_sha=pix, phash=ph, store_path=path)

    # -- reads for status/export/train ---------------------------------------------

    def images(self, dataset: str, *, statuses: tuple[str, ...] | None = None):
        sql = "SELECT * FROM images WHERE dataset = ?"
        params: list[Any] = [dataset]
        if statuses:
            sql += " AND status IN (SELECT unnest(?))"
            params.append(list(statuses))
        return self.df(sql + " ORDER BY image_id", params)

    def datasets_in_catalog(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT DISTINCT dataset FROM items ORDER BY 1").fetchall()]

    def status_counts(self, dataset: str):
        """Counts per label × split × status."""
        return self.df(
            """SELECT label, coalesce(split, '-') AS split, status, count(*) AS n
               FROM images WHERE dataset = ? GROUP BY ALL ORDER BY label, split, status""",
            [dataset],
        )

    def superseded_count(self, dataset: str) -> tuple[int, int]:
        """(set aside, superseded): the items of ``dataset`` a build set aside (``source removed``), and of them those
        whose file (origin and content) an item not set aside supplies now — an earlier row of a file still in the
        dataset under another label (a label edited in a labels CSV, a class renamed, merged or split)."""
        row = self.con.execute(
            """SELECT count(*), count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM items b WHERE b.dataset = a.dataset AND b.origin = a.origin AND b.sha256 = a.sha256
                   AND b.reason IS DISTINCT FROM 'source removed'))
               FROM items a WHERE a.dataset = ? AND a.reason = 'source removed'""",
            [dataset],
        ).fetchone()
        return int(row[0]), int(row[1])

    def reject_counts(self, dataset: str):
        return self.df(
            """SELECT status, reason, count(*) AS n FROM images
               WHERE dataset = ? AND status IN ('rejected', 'failed') GROUP BY ALL ORDER BY n DESC, reason""",
            [dataset],
        )

    def label_reject_counts(self, dataset: str) -> dict[str, list[tuple[str | None, int]]]:
        """label → ``[(reason, n), …]`` of the rejected and failed images of ``dataset``, most frequent first."""
        rows = self.con.execute(
            """SELECT label, reason, count(*) AS n FROM images WHERE dataset = ? AND status IN ('rejected', 'failed')
               GROUP BY ALL ORDER BY label, n DESC, reason""",
            [dataset],
        ).fetchall()
        out: dict[str, list[tuple[str | None, int]]] = {}
        for label, reason, n in rows:
            out.setdefault(str(label), []).append((reason, int(n)))
        return out

    def build_item_counts(self, dataset: str, build_ids: list[int]) -> list[tuple[str, str | None, int]]:
        """(status, reason, n) of the items of ``dataset`` that the builds ``build_ids`` catalogued, as they stand
        now — review applied (an image a reviewer removed is ``rejected``, ``removed in review``, as ``status``
        shows it)."""
        rows = self.con.execute(
            """SELECT v.status, v.reason, count(*) FROM items i JOIN images v USING (dataset, image_id)
               WHERE i.dataset = ? AND i.build_id IN (SELECT unnest(?)) GROUP BY ALL ORDER BY ALL""",
            [dataset, [int(b) for b in build_ids]],
        ).fetchall()
        return [(status, reason, int(n)) for status, reason, n in rows]

    def quality_flag_counts(self, dataset: str) -> dict[str, int]:
        """flag → number of accepted (ok) images of ``dataset`` that carry it."""
        rows = self.con.execute(
            """SELECT flag, count(*) FROM (
                   SELECT unnest(quality_issues) AS flag FROM images WHERE dataset = ? AND status = 'ok')
               GROUP BY flag""",
            [dataset],
        ).fetchall()
        return {flag: int(n) for flag, n in rows}

    def duplicate_counts(self, dataset: str) -> dict[str, int]:
        row = self._one(
            """SELECT count(*) FILTER (WHERE status = 'duplicate'),
                      count(DISTINCT dup_group),
                      (SELECT count(*) FROM conflicts WHERE dataset = ?)
               FROM images WHERE dataset = ? AND dup_group IS NOT NULL""",
            [dataset, dataset],
        )
        # A straddling group is "given" when the members that sit in the split their folder gave span splits (the
        # dataset came with the leak; a drawn member beside them follows them); otherwise drawn splits were kept
        # stable when a near-duplicate link joined the group later.
        # An image removed in review (the images view's status) leaks no more, as in @split_leakage.
        leaks, kept = self._one(
            """SELECT count(*), count(*) FILTER (WHERE NOT given) FROM (
                   SELECT i.dup_group, count(DISTINCT i.split) FILTER (WHERE i.split = i.given_split) > 1 AS given
                   FROM items i JOIN images v USING (dataset, image_id)
                   WHERE i.dataset = ? AND i.dup_group IS NOT NULL AND i.split IS NOT NULL
                         AND v.status IN ('ok', 'duplicate')
                   GROUP BY i.dup_group HAVING count(DISTINCT i.split) > 1)""",
            [dataset],
        )
        pairs = self._one(
            """SELECT count(*) FROM (SELECT dataset, image_id, unnest(leak_with) AS other FROM images
                                     WHERE dataset = ? AND status IN ('ok', 'duplicate')) a
               JOIN images b ON b.dataset = a.dataset AND b.image_id = a.other AND b.status IN ('ok', 'duplicate')
               WHERE a.image_id < a.other""", [dataset])[0]
        return {"duplicates": int(row[0]), "groups": int(row[1]), "conflicts": int(row[2]), "leaks": int(leaks),
                "leaks_kept": int(kept), "leak_pairs": int(pairs)}

    def near_duplicate_share(self, dataset: str) -> tuple[int, int, int]:
        """``(near duplicates, accepted images incl. duplicates, outliers flagged)`` of ``dataset``."""
        row = self._one(
            """SELECT count(*) FILTER (WHERE reason = 'near duplicate'), count(*),
                      count(*) FILTER (WHERE is_outlier)
               FROM images WHERE dataset = ? AND status IN ('ok', 'duplicate')""", [dataset])
        return int(row[0]), int(row[1]), int(row[2])

    def last_build_outcome(self, dataset: str) -> str | None:
        """The outcome (running | ok | interrupted | failed) of the latest build that included ``dataset``, or None."""
        row = self._one("SELECT outcome FROM builds WHERE list_contains(string_split(datasets, ','), ?) "
                        "ORDER BY build_id DESC LIMIT 1", [dataset])
        return row[0] if row else None

    def interrupted_builds(self, dataset: str, *, before: int) -> list[tuple[int, str]]:
        """``(build_id, outcome)`` of the builds before build ``before`` that included ``dataset`` since its latest
        finished one (outcome ``ok``) and did not finish (``interrupted``, ``failed``; a killed build is marked
        interrupted when the next one starts) before they split its images: they verified and catalogued items of
        it that no build has grouped or split yet (an accepted one without a split). Oldest first; empty when the
        latest build of it finished. Call before the build regroups the dataset."""
        rows = self.con.execute(
            """SELECT b.build_id, b.outcome FROM builds b
               WHERE list_contains(string_split(b.datasets, ','), ?) AND b.build_id < ?
                 AND b.outcome IN ('interrupted', 'failed')
                 AND b.build_id > coalesce((SELECT max(build_id) FROM builds WHERE list_contains(string_split(datasets, ','), ?)
                                            AND build_id < ? AND outcome = 'ok'), 0)
                 AND EXISTS (SELECT 1 FROM items i WHERE i.dataset = ? AND i.build_id = b.build_id
                                                     AND i.status = 'ok' AND i.split IS NULL)
               ORDER BY b.build_id""", [dataset, before, dataset, before, dataset]).fetchall()
        return [(int(b), str(outcome)) for b, outcome in rows]

    def last_source_notes(self, dataset: str) -> tuple[int, list[str]] | None:
        """``(build_id, lines)``: what the sources of ``dataset`` reported (rows of a labels CSV skipped, a bad line of
        a URL list, …) in the latest finished build that included it; None when there is none, or it was recorded
        before builds kept these lines."""
        row = self._one("SELECT build_id, summary FROM builds WHERE outcome = 'ok' AND "
                        "list_contains(string_split(datasets, ','), ?) ORDER BY build_id DESC LIMIT 1", [dataset])
        if not row or not row[1]:
            return None
        try:
            entries = json.loads(row[1]).get("datasets") or []
        except (TypeError, ValueError, AttributeError):
            return None
        entry = next((d for d in entries if isinstance(d, dict) and d.get("dataset") == dataset), None)
        if entry is None or not isinstance(entry.get("source_notes"), list):
            return None
        return int(row[0]), [str(line) for line in entry["source_notes"]]

    def last_build(self):
        return self._one(
            "SELECT build_id, datasets, started_at, finished_at, outcome, summary FROM builds ORDER BY build_id DESC LIMIT 1"
        )

    # -- label events ----------------------------------------------------------------

    def label_history(self, dataset: str, *, image_ids: list[str] | None = None):
        """The ``label_events`` rows of ``dataset`` (of ``image_ids`` only, when given), oldest first."""
        if image_ids is None:
            return self.df("SELECT * FROM label_events WHERE dataset = ? ORDER BY event_id", [dataset])
        return self.df("SELECT * FROM label_events WHERE dataset = ? AND image_id IN (SELECT unnest(?)) ORDER BY event_id",
                       [dataset, list(image_ids)])

    def append_label_events(self, dataset: str, events: list[dict]) -> int:
        """Append review events (:func:`dsbuild.decisions.plan_events`) as ``label_events`` rows; all or nothing."""
        if not events:
            return 0
        from dsbuild.rows import LABEL_EVENT_COLUMNS, label_event_frame, label_event_rows

        with self.transaction():
            start = int(self._one("SELECT coalesce(max(event_id), 0) FROM label_events")[0])
            if len(events) <= SMALL_INSERT:  # a review app's key press: parameters, no DataFrame (≈1 ms, not ≈4)
                self.con.executemany(
                    f"INSERT INTO label_events ({', '.join(LABEL_EVENT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(LABEL_EVENT_COLUMNS))})",
                    label_event_rows(events, dataset=dataset, first_id=start + 1))
            else:
                self._insert_frame("label_events", label_event_frame(events, dataset=dataset, first_id=start + 1),
                                   LABEL_EVENT_COLUMNS)
            self._refresh_conflicts(dataset, image_ids=sorted({str(e["image_id"]) for e in events}))
        return len(events)

    def _insert_frame(self, table: str, frame, columns: tuple[str, ...]) -> None:
        """INSERT ``frame``'s ``columns`` into ``table`` (the caller holds the transaction)."""
        cols = ", ".join(columns)
        self.con.register("_frame", frame)
        try:
            self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _frame")
        finally:
            self.con.unregister("_frame")

    def _refresh_conflicts(self, dataset: str, *, image_ids: list[str] | None = None) -> None:
        """Recompute ``items.conflict`` from the current labels (in the caller's transaction).

        A group is a label conflict while its ``ok``/``duplicate`` members (as the
        ``images`` view has them: removed in review = rejected) carry more than one
        label — exactly the ``conflicts`` view. Run after every label event, so the
        stored flag never lags the events until the next build. ``image_ids``: only the
        duplicate groups of these images can have changed (an event's images); an image in
        no group changes nothing.
        """
        scope, params = "", [dataset, dataset]
        if image_ids is not None:
            groups = [r[0] for r in self.con.execute(
                "SELECT DISTINCT dup_group FROM items WHERE dataset = ? AND dup_group IS NOT NULL "
                "AND image_id IN (SELECT unnest(?))", [dataset, list(image_ids)]).fetchall()]
            if not groups:
                return
            scope, params = " AND im.dup_group IN (SELECT unnest(?))", [dataset, dataset, groups]
        self.con.execute(
            f"""UPDATE items SET conflict = c.flag
               FROM (SELECT im.image_id, coalesce(im.dup_group IN (SELECT dup_group FROM conflicts WHERE dataset = ?), false)
                            AS flag
                     FROM images im WHERE im.dataset = ?{scope}) c
               WHERE items.dataset = ? AND items.image_id = c.image_id AND items.conflict IS DISTINCT FROM c.flag""",
            [*params, dataset],
        )

    # -- model runs ----------------------------------------------------------------------

    def start_run(self, *, run_id: str, dataset: str, kind: str, arch: str | None, params: dict, parent_run: str | None = None,
                  inputs_digest: str | None = None) -> None:
        self.con.execute(
            "INSERT INTO model_runs (run_id, dataset, kind, arch, started_at, status, params, parent_run, inputs_digest) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            [run_id, dataset, kind, arch, utcnow(), json.dumps(params, default=str), parent_run, inputs_digest],
        )

    def mark_runs_interrupted(self) -> int:
        """Mark ``running`` model runs ``interrupted``: their process is gone (call while holding the
        :class:`BuildLock`, which a running command holds for its whole run). Returns how many."""
        rows = self.con.execute(
            "UPDATE model_runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?), "
            "error = coalesce(error, 'the process ended without finishing the run (killed)') "
            "WHERE status = 'running' RETURNING run_id", [utcnow()]).fetchall()
        return len(rows)

    def finish_run(self, run_id: str, **fields: Any) -> None:
        fields.setdefault("finished_at", utcnow())
        fields.setdefault("status", "ok")
        for key in ("epochs", "confusion", "per_class", "valid_ids", "train_ids", "params"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key], default=str)
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.con.execute(f"UPDATE model_runs SET {sets} WHERE run_id = ?", [*fields.values(), run_id])

    def runs(self, dataset: str, *, kind: tuple[str, ...] = ("train", "retrain"), status: str = "ok"):
        return self.df(
            "SELECT * FROM model_runs WHERE dataset = ? AND kind IN (SELECT unnest(?)) AND status = ? ORDER BY started_at",
            [dataset, list(kind), status],
        )

    def insert_issue_rows(self, run_id: str, dataset: str, rows) -> None:
        """Store the issue rows of run ``run_id`` (the finders' rows, as :func:`dsbuild.rows.issue_frame` shapes them)."""
        if len(rows) == 0:
            return
        from dsbuild.rows import ISSUE_COLUMNS, issue_frame

        with self.transaction():
            self._insert_frame("issue_rows", issue_frame(rows, run_id=run_id, dataset=dataset), ISSUE_COLUMNS)

    def trainable_images(self, dataset: str):
        """Images a model may learn from (status ok, with a split): image_id, path, label, split, origin, sha256,
        pixel_sha (the pixels verification reads from the blob: with the sha256, the key of its cached features).

        Ordered by content hash (image ids depend on where the files are): folds and batches,
        and so every model run, come out the same on any machine.
        """
        return self.df(
            "SELECT i.image_id, i.path, i.label, i.split, i.origin, i.sha256, b.pixel_sha FROM images i "
            "LEFT JOIN blobs b USING (sha256) WHERE i.dataset = ? AND i.status = 'ok' AND i.split IS NOT NULL "
            "ORDER BY i.sha256, i.image_id",
            [dataset],
        )

    def valid_images(self, dataset: str):
        """Accepted images of the valid split with their current labels: image_id, path, label, sha256, dup_group,
        pixel_sha (as :meth:`trainable_images`)."""
        return self.df(
            "SELECT i.image_id, i.path, i.label, i.sha256, i.dup_group, b.pixel_sha FROM images i "
            "LEFT JOIN blobs b USING (sha256) WHERE i.dataset = ? AND i.status = 'ok' AND i.split = 'valid' "
            "ORDER BY i.image_id",
            [dataset],
        )

    def image_copies(self, dataset: str, image_ids: list[str]):
        """What identifies ``image_ids`` (those still in ``dataset``) beyond their id: image_id, sha256 (the
        content), dup_group (exact and near copies share one; NULL for an image with none)."""
        return self.df("SELECT image_id, sha256, dup_group FROM items WHERE dataset = ? AND image_id IN (SELECT unnest(?)) "
                       "ORDER BY image_id", [dataset, list(image_ids)])

    def review_candidates(self, dataset: str):
        """Every image of ``dataset`` a decisions file may name: image_id, path, origin, label, status, reason."""
        return self.df("SELECT image_id, path, origin, label, status, reason FROM images WHERE dataset = ?", [dataset])

    def current_states(self, dataset: str, image_ids: list[str]):
        """The current state of ``image_ids`` (those in ``dataset``), by image_id: image_id, label, status,
        reason, last_review, reviewed, decided — the ``images`` view's columns, computed from the images' item rows
        and label events by :func:`~dsbuild.catalog.image_state.image_state` (≈2 ms where the view takes
        ≈12 ms on a 10,000-image catalog: a review app reads this on every key press)."""
        import pandas as pd

        from dsbuild.catalog.image_state import REVIEWABLE_BUILD_STATUS, image_state

        ids = list(image_ids)
        items = self.con.execute("SELECT image_id, class_label, status, reason FROM items WHERE dataset = ? "
                                 "AND image_id IN (SELECT unnest(?)) ORDER BY image_id", [dataset, ids]).fetchall()
        events: dict[str, list[dict]] = {}
        for image_id, event_id, action, new_label, new_status in self.con.execute(
                "SELECT image_id, event_id, action, new_label, new_status FROM label_events WHERE dataset = ? "
                "AND image_id IN (SELECT unnest(?))", [dataset, ids]).fetchall():
            events.setdefault(image_id, []).append(
                {"event_id": event_id, "action": action, "new_label": new_label, "new_status": new_status})
        rows = []
        for image_id, class_label, status, reason in items:
            st = image_state(class_label, status, events.get(image_id, []))
            removed = st.status == "rejected" and status in REVIEWABLE_BUILD_STATUS  # the images view's rule
            rows.append({"image_id": image_id, "label": st.label, "status": st.status,
                         "reason": "removed in review" if removed else reason, "last_review": st.last_review,
                         "reviewed": st.reviewed, "decided": st.decided})
        return pd.DataFrame(rows, columns=["image_id", "label", "status", "reason", "last_review", "reviewed", "decided"])

    def latest_label_quality(self, dataset: str, image_ids: list[str]) -> dict[str, float]:
        """``label_quality`` of ``image_ids`` among the latest ok mislabel run's flags (as ``latest_issues`` has them,
        the last by rank where an image has several; images it did not flag are absent)."""
        rows = self.con.execute(
            """SELECT image_id, label_quality FROM issue_rows
               WHERE dataset = ? AND is_issue AND image_id IN (SELECT unnest(?))
                 AND run_id = (SELECT arg_max(run_id, started_at) FROM model_runs
                               WHERE dataset = ? AND kind = 'mislabels' AND status = 'ok')
               ORDER BY rank""",
            [dataset, list(image_ids), dataset]).fetchall()
        return {str(i): q for i, q in rows}

    def dataset_labels(self, dataset: str) -> list[str]:
        """The labels the images of ``dataset`` carry now, sorted."""
        return [r[0] for r in self.con.execute("SELECT DISTINCT label FROM images WHERE dataset = ? AND label IS NOT NULL "
                                               "ORDER BY 1", [dataset]).fetchall()]

    def accepted_under(self, dataset: str, labels: list[str], *, image_ids: list[str] | None = None) -> list[tuple[str, str]]:
        """(image_id, label) of the accepted (``ok``, review applied) images of ``dataset`` whose label is one of
        ``labels``, among ``image_ids`` when given, ordered by label then image_id."""
        if not labels:
            return []
        sql = "SELECT image_id, label FROM images WHERE dataset = ? AND status = 'ok' AND label IN (SELECT unnest(?))"
        params: list = [dataset, list(labels)]
        if image_ids is not None:
            sql += " AND image_id IN (SELECT unnest(?))"
            params.append(list(image_ids))
        return [(str(i), str(label)) for i, label in self.con.execute(sql + " ORDER BY label, image_id", params).fetchall()]

    def conflict_members(self, dataset: str):
        """Images of duplicate groups that carry several labels: image_id, dup_group, label, status, path, origin,
        sha256."""
        return self.df(
            "SELECT image_id, dup_group, label, status, path, origin, sha256 FROM images WHERE dataset = ? AND dup_group IN "
            "(SELECT dup_group FROM conflicts WHERE dataset = ?)",
            [dataset, dataset],
        )

    def kept_in_review(self, dataset: str):
        """Images whose standing review decision (not undone) is a reviewer's ``keep``: image_id, label_quality."""
        return self.df(
            "SELECT image_id, last_review_quality AS label_quality FROM review_state "
            "WHERE dataset = ? AND last_review = 'keep'", [dataset])

    def run_row(self, run_id: str) -> dict | None:
        """The ``model_runs`` row of ``run_id`` as a dict, or None."""
        df = self.df("SELECT * FROM model_runs WHERE run_id = ?", [run_id])
        return None if df.empty else df.iloc[0].to_dict()

    def duplicate_members(self, dataset: str):
        """Members of every duplicate group of ``dataset`` (groups of two or more), for the duplicates page."""
        return self.df(
            """SELECT dup_group, image_id, path, label, split, status, width, height, dup_of, dup_distance, origin
               FROM images WHERE dataset = ? AND dup_group IN (
                   SELECT dup_group FROM images WHERE dataset = ? AND dup_group IS NOT NULL
                   GROUP BY dup_group HAVING count(*) > 1)
               ORDER BY dup_group, image_id""",
            [dataset, dataset],
        )

    def leak_pair_members(self, dataset: str):
        """Both images of each near-duplicate pair of ``dataset`` left in different splits (``items.leak_with``; an
        image removed in review leaks no more, as in ``@split_leakage``), for the duplicates page: one row per image,
        ``pair`` = the two ids joined by a space."""
        return self.df(
            """WITH p AS (
                   SELECT a.image_id AS a, a.other AS b
                   FROM (SELECT image_id, unnest(leak_with) AS other FROM images
                         WHERE dataset = ? AND status IN ('ok', 'duplicate')) a
                   JOIN images o ON o.dataset = ? AND o.image_id = a.other AND o.status IN ('ok', 'duplicate')
                   WHERE a.image_id < a.other)
               SELECT p.a || ' ' || p.b AS pair, i.image_id, i.path, i.label, i.split, i.status, i.width, i.height,
                      i.origin
               FROM p JOIN images i ON i.dataset = ? AND i.image_id IN (p.a, p.b)
               ORDER BY pair, i.split, i.image_id""",
            [dataset, dataset, dataset],
        )

    def fresh_mislabel_run(self, dataset: str, inputs_digest: str) -> str | None:
        """The latest ok mislabel run of ``dataset`` if it scored the same inputs (``inputs_digest``), else None."""
        row = self._one(
            """SELECT arg_max(run_id, started_at), arg_max(inputs_digest, started_at) FROM model_runs
               WHERE dataset = ? AND kind = 'mislabels' AND status = 'ok'""",
            [dataset],
        )
        return row[0] if row and row[0] is not None and row[1] == inputs_digest else None

    def last_attempt(self, dataset: str, kind: str) -> dict | None:
        """The latest ``model_runs`` row of ``kind`` for ``dataset`` whatever its status (ok, refused, failed, running), or None."""
        df = self.df("SELECT * FROM model_runs WHERE dataset = ? AND kind = ? ORDER BY started_at DESC LIMIT 1",
                     [dataset, kind])
        return None if df.empty else df.iloc[0].to_dict()

    def latest_mislabel_run(self, dataset: str) -> str | None:
        """The latest ok mislabel run of ``dataset`` (whatever came after it), or None."""
        row = self._one("SELECT arg_max(run_id, started_at) FROM model_runs WHERE dataset = ? AND kind = 'mislabels' "
                        "AND status = 'ok'", [dataset])
        return row[0] if row else None

    def run_issues(self, run_id: str):
        """Every flag of mislabel run ``run_id`` (label issues first, by rank)."""
        return self.df("SELECT * FROM label_issues_all WHERE run_id = ? ORDER BY kind <> 'label', rank", [run_id])

    def latest_issues(self, dataset: str, *, image_ids: list[str] | None = None):
        """The latest mislabel run's flags of ``dataset`` (of ``image_ids`` only, when given), by rank."""
        if image_ids is None:
            return self.df("SELECT * FROM label_issues WHERE dataset = ? ORDER BY rank", [dataset])
        return self.df("SELECT * FROM label_issues WHERE dataset = ? AND image_id IN (SELECT unnest(?)) ORDER BY rank",
                       [dataset, list(image_ids)])


def open_for_writing(path: Path, *, yields: bool = False, command: str | None = None) -> "tuple[BuildLock, Catalog]":
    """Take the writers' :class:`~dsbuild.catalog.lock.BuildLock` (``yields``: as a holder that gives the
    catalog up when asked; ``command``: what this process runs, named to the commands it refuses), open the catalog read-write and mark runs whose process died ``interrupted``
    (holding the lock, no other writer runs). Returns ``(lock, catalog)``; the caller closes the catalog
    and releases the lock. On any failure nothing stays taken. Raises CatalogBusy while another writer
    holds the lock.
    """
    lock = BuildLock(path, yields=yields, command=command)
    lock.acquire()
    try:
        cat = Catalog.open(path)
        try:
            cat.mark_runs_interrupted()
        except BaseException:
            cat.close()
            raise
    except BaseException:
        lock.release()
        raise
    return lock, cat
