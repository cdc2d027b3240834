"""Users' SQL on the catalog: the sandboxed read-only query and the named (``@name``) queries.

Readers open the file read-only in a sandbox: no writes, no file system access,
no extensions, locked configuration, interruptible (a timer and Ctrl-C).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from dsbuild.catalog.db import held_stops, is_interruption, translate_error
from dsbuild.catalog.lock import retry_while_yielding
from dsbuild.errors import CatalogBusy, DsbuildError, Terminated, closest, did_you_mean, lost_stop


def sandboxed_query(path: Path, sql: str, *, timeout: float | None = 60.0, max_rows: int | None = None,
                    manifest_root: Path | None = None):
    """Run a user's ``sql`` on the catalog read-only, with no file system access; return a DataFrame.

    A table or view the catalog does not have is named with the closest of its tables, views and named queries
    (``manifest_root``: the project's too, else the built-ins), not DuckDB's own guess (which offers its
    system tables, e.g. ``duckdb_tables``).

    The connection is opened read-only with external access, extension loading
    and community extensions disabled, then its configuration is locked so the
    SQL cannot switch any of it back on. A timer interrupts the query after
    ``timeout`` seconds; Ctrl-C interrupts it too.
    """
    import duckdb

    path = Path(path)
    if not path.exists():
        raise DsbuildError(f"no catalog at {path} — run `dsbuild build` first")
    if not sql.strip():
        raise DsbuildError("empty query — give SQL or @name (see `dsbuild query --list`)")
    def attempt():
        try:
            con = duckdb.connect(
                str(path),
                read_only=True,
                config={
                    "enable_external_access": False,
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "allow_community_extensions": False,
                    "allow_unsigned_extensions": False,
                    "memory_limit": "2GB",
                    "threads": 2,
                },
            )
            con.execute("SET lock_configuration = true")
            return con
        except duckdb.Error as exc:
            raise translate_error(exc, path) from None

    # Busy because the review app holds the file between decisions: it lets go when asked.
    con = retry_while_yielding(path, attempt, is_busy=lambda e: isinstance(e, CatalogBusy))

    timer = None
    timed_out = threading.Event()
    if timeout:
        def _stop() -> None:
            timed_out.set()
            con.interrupt()

        timer = threading.Timer(timeout, _stop)
        timer.daemon = True
        timer.start()
    kind = ""  # the statement's type, once parsed (a parse error has none)
    try:
        try:
            parsed = con.extract_statements(sql)
            statements = len(parsed)
            kind = parsed[0].type.name if statements == 1 else ""
            if statements > 1:  # DuckDB would run them all and return only the last one's rows
                raise DsbuildError(f"{statements} SQL statements given — query runs one statement at a time; "
                                   "run them one by one", exit_code=2)

            def run():
                rel = con.execute(sql)
                if rel.description is None:
                    import pandas as pd

                    return pd.DataFrame()
                return rel.df() if max_rows is None else _fetch_limited(rel, max_rows)

            return _off_this_thread(run, con)
        except Terminated:
            raise
        except KeyboardInterrupt:
            raise DsbuildError("query interrupted", exit_code=130) from None
        except (duckdb.InterruptException, RuntimeError) as exc:
            if not is_interruption(exc):
                raise
            if isinstance(stop := lost_stop(), Terminated):  # SIGTERM, which DuckDB turned into its own error
                raise stop from None
            if timed_out.is_set():
                raise DsbuildError(f"query ran longer than {timeout:g} s and was stopped — narrow it, or raise --timeout") from None
            raise DsbuildError("query interrupted", exit_code=130) from None
        except duckdb.Error as exc:
            unknown = _unknown_table(exc)
            if unknown is not None:
                raise DsbuildError(_unknown_table_text(exc, unknown, con, manifest_root)) from None
            raise DsbuildError(_sql_error_text(exc, kind)) from None
    finally:
        if timer is not None:
            timer.cancel()
        con.close()


def _off_this_thread(run, con, grace_s: float = 10.0):
    """``run()`` in a worker thread while this one waits with Ctrl-C and SIGTERM held (:func:`held_stops`): a stop
    ends the statement with ``con.interrupt()`` (as the timeout does) and is raised when it has ended (or after
    ``grace_s``; the worker is a daemon thread). Returns ``run()``'s result or raises its error. Without this a
    Ctrl-C during a long query printed DuckDB's "RuntimeError: Query interrupted" traceback, or hung."""
    box: dict = {}

    def work() -> None:
        try:
            box["out"] = run()
        except BaseException as exc:  # handed to the caller's thread
            box["exc"] = exc

    worker = threading.Thread(target=work, name="dsbuild-query", daemon=True)
    with held_stops() as held:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if held:
                con.interrupt()
                worker.join(grace_s)
                break
    if "exc" in box:
        raise box["exc"]
    return box["out"]


def _fetch_limited(rel, max_rows: int):
    import pandas as pd

    cols = [d[0] for d in rel.description]
    return pd.DataFrame(rel.fetchmany(max_rows), columns=cols)


WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER"})
"""DuckDB statement types that would change the catalog: refused whatever DuckDB's own error says."""


def _sql_error_text(exc: Exception, kind: str = "") -> str:
    """The user's message for DuckDB's error ``exc`` on a statement of type ``kind`` (``DELETE``, …; "" unknown).

    A write is named as such where DuckDB refuses it for a reason of its own first (a DELETE on a view is a
    Binder Error about base tables, not the read-only one).
    """
    text = str(exc).strip()
    if "read-only mode" in text or "read only mode" in text:
        return f"the catalog is read-only for queries — {text.splitlines()[0]}"
    if "file system operations are disabled" in text or "external access" in text.lower():
        return f"queries cannot read or write files — {text.splitlines()[0]}"
    if "configuration has been locked" in text:
        return f"queries cannot change settings — {text.splitlines()[0]}"
    if "Loading external extensions is disabled" in text:
        return f"queries cannot load extensions — {text.splitlines()[0]}"
    if kind in WRITES:
        return (f"the catalog is read-only for queries — a {kind} statement cannot change it (DuckDB: "
                f"{text.splitlines()[0]})")
    return text


_UNKNOWN_TABLE = re.compile(r'Catalog Error: Table with name (?P<name>.+?) does not exist!')


def _unknown_table(exc: Exception) -> str | None:
    """The table name of DuckDB's "Table with name X does not exist!" error, else None."""
    import duckdb

    if not isinstance(exc, duckdb.CatalogException):
        return None
    m = _UNKNOWN_TABLE.search(str(exc))
    return m.group("name") if m else None


def _unknown_table_text(exc: Exception, name: str, con, manifest_root: Path | None) -> str:
    """The user's message for a table or view the catalog does not have: the closest of the catalog's tables and
    views, else of the named queries (``@name`` runs on its own, not inside SQL), and the views a query reads;
    DuckDB's pointer to the place in the SQL is kept, its guess (a system table) is not."""
    try:
        rows = con.execute("select table_name, table_type from information_schema.tables "
                           "where table_schema = 'main' order by table_name").fetchall()
    except Exception:  # noqa: BLE001 - the error is about the user's SQL; the names only help
        rows = []
    views = [n for n, kind in rows if kind == "VIEW"]
    tables = [n for n, _ in rows]
    try:
        named = sorted(list_named_queries(manifest_root)) if manifest_root is not None else \
            sorted(f.stem for f in BUILTIN_QUERIES.glob("*.sql"))
    except DsbuildError:  # a project query shadowing a built-in: that error comes when it is run
        named = sorted(f.stem for f in BUILTIN_QUERIES.glob("*.sql"))
    bare = name.rsplit(".", 1)[-1]
    close_named = next((q for q in named if q.casefold() == bare.casefold()), None)
    close = None if close_named else closest(bare, tables)
    if close is None and close_named is None:
        close_named = closest(bare, named)
    if close is not None:
        hint = f" (did you mean '{close}'?)"
    elif close_named is not None:
        hint = (f" (did you mean the named query @{close_named}? it runs on its own: "
                f"`dsbuild query @{close_named}`)")
    else:
        hint = ""
    listed = f" — the catalog's views: {', '.join(views)}" if views else ""
    text = (f"no table or view named '{bare}' in the catalog{hint}{listed}; "
            "`dsbuild query --list` lists the named queries")
    where = str(exc).strip().split("\n\n", 1)
    return text + (f"\n\n{where[1]}" if len(where) == 2 and where[1].startswith("LINE") else "")


# --------------------------------------------------------------------------- named queries

BUILTIN_QUERIES = Path(__file__).parent / "queries"
"""The built-in ``@name`` queries, shipped inside dsbuild (package data)."""


def project_queries(manifest_root: Path) -> Path:
    """The project's own ``@name`` queries: ``catalog/queries/`` beside the manifest."""
    return Path(manifest_root) / "catalog" / "queries"


def named_query_dirs(manifest_root: Path) -> list[Path]:
    """Where ``@name`` queries are looked up: the built-ins, then the project's ``catalog/queries``."""
    return [BUILTIN_QUERIES, project_queries(manifest_root)]


def _shadowing(manifest_root: Path, names: list[str] | None = None) -> list[Path]:
    """Project query files that take a built-in query's name (all of them, or those of ``names``)."""
    folder = project_queries(manifest_root)
    if not folder.is_dir():
        return []
    builtin = {f.stem for f in BUILTIN_QUERIES.glob("*.sql")}
    return [f for f in sorted(folder.glob("*.sql")) if f.stem in builtin and (names is None or f.stem in names)]


def _refuse_shadowing(files: list[Path]) -> None:
    if files:
        listed = ", ".join(str(f) for f in files)
        raise DsbuildError(f"{listed} {'has' if len(files) == 1 else 'have'} the name of a built-in query — rename "
                           f"{'it' if len(files) == 1 else 'them'} (e.g. my_{files[0].name}): a built-in is never "
                           "replaced (`dsbuild query --list` shows them)")


def resolve_named_query(name: str, manifest_root: Path) -> str:
    """The SQL text of ``@name``: a built-in query, else the project's ``catalog/queries/<name>.sql``.

    The rule: built-ins are never shadowed. A project file that takes a built-in's name
    is an error (naming the file), so an edit to a built-in always takes effect and a
    project query is never silently ignored.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DsbuildError(f"bad query name '@{name}' — names use letters, digits, '_' and '-'")
    _refuse_shadowing(_shadowing(manifest_root, [name]))
    for folder in named_query_dirs(manifest_root):
        file = folder / f"{name}.sql"
        if file.is_file():
            return file.read_text(encoding="utf-8")
    known = sorted(list_named_queries(manifest_root))
    hint = did_you_mean(name, known, prefix="@")
    return_known = ", ".join("@" + k for k in known) or "(none)"
    raise DsbuildError(f"no named query '@{name}'{hint} — known: {return_known}")


def list_named_queries(manifest_root: Path) -> dict[str, str]:
    """name → first comment line (description) of every named query: the built-ins, then the project's.

    Raises DsbuildError when a project query takes a built-in's name (see :func:`resolve_named_query`).
    """
    _refuse_shadowing(_shadowing(manifest_root))
    out: dict[str, str] = {}
    for folder in named_query_dirs(manifest_root):
        if folder.is_dir():
            for file in sorted(folder.glob("*.sql")):
                first = file.read_text(encoding="utf-8").splitlines()[:1]
                desc = first[0].lstrip("- ").strip() if first and first[0].startswith("--") else ""
                out[file.stem] = desc
    return out
