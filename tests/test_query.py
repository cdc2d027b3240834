"""`dsbuild query`: the read-only, sandboxed SQL boundary on a real catalog built from real photos.

One catalog is built once per module (two classes of skimage photo crops, with a
too-small image, a non-image, an exact duplicate and a cross-label conflict
planted). Nothing a query does may change the catalog file or write any file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from dsbuild.pipeline import build
from dsbuild.catalog import BuildLock, Catalog, list_named_queries, sandboxed_query
from dsbuild.cli import main
from dsbuild.errors import CatalogBusy, DsbuildError
from dsbuild.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_QUERIES = sorted(p.stem for p in (REPO / "dsbuild" / "catalog" / "queries").glob("*.sql"))

MANIFEST = """\
[datasets.pets]
description = "cats and cups"
[datasets.pets.classes]
cat = { folders = "photos/cat" }
cup = { folders = "photos/cup" }
"""

# The user-facing contract (DESIGN.md): these columns, with these exact names.
CONTRACT = {
    "images": ["dataset", "image_id", "path", "origin", "engine", "query", "label", "original_label", "split", "status",
               "reason", "width", "height", "format", "bytes", "sha256", "phash", "dup_group"],
    "label_issues": ["dataset", "image_id", "path", "origin", "given_label", "suggested_label", "label_quality", "rank",
                     "run_id"],
    "runs": ["run_id", "dataset", "kind", "arch", "started_at", "finished_at", "n_train", "n_valid", "error_rate",
             "accuracy", "model_path"],
}


@dataclass(frozen=True)
class Project:
    root: Path
    manifest: Path
    catalog: Path


def _crop(arr, i: int, n: int = 5) -> Image.Image:
    """The ``i``-th of ``n`` different 200×200 crops of a real photo (top-right to bottom-left)."""
    h, w = arr.shape[:2]
    y, x = (h - 200) * i // (n - 1), (w - 200) * (n - 1 - i) // (n - 1)
    return Image.fromarray(arr[y : y + 200, x : x + 200])


def make_project(root: Path) -> Project:
    """A manifest with two classes of real photos plus planted problems; not built yet.

    cat: 5 crops of chelsea + an exact copy of one + a 16 px image (too small);
    cup: 5 crops of coffee + a text file named .jpg + a larger copy of a cat crop
    (a near duplicate under another label: a conflict; being larger, the cup copy
    is the group's representative, so the counts below do not depend on paths).
    """
    for label, arr in (("cat", skdata.chelsea()), ("cup", skdata.coffee())):
        folder = root / "photos" / label
        folder.mkdir(parents=True)
        for i in range(5):
            _crop(arr, i).resize((64, 64)).save(folder / f"{label}{i}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(skdata.chelsea()).resize((16, 16)).save(root / "photos/cat/tiny.png")
    (root / "photos/cup/notes.jpg").write_bytes(b"not an image\n" * 20)
    shutil.copyfile(root / "photos/cat/cat0.jpg", root / "photos/cat/cat0-again.jpg")
    _crop(skdata.chelsea(), 1).resize((80, 80)).save(root / "photos/cup/cat-in-cups.png")
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST)
    return Project(root=root, manifest=manifest, catalog=root / "catalog" / "dsbuild.duckdb")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    proj = make_project(tmp_path_factory.mktemp("query"))
    summary = build(load_manifest(proj.manifest), ["pets"], workers=1)
    (ds,) = summary.datasets
    assert (ds.sources, ds.rejected, ds.duplicates, ds.conflicts) == (14, 2, 2, 1)
    assert proj.catalog.is_file()
    return proj


def run(project: Project, capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["query", "-q", "-m", str(project.manifest), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def error_lines(err: str) -> int:
    return sum(line.startswith("Error:") for line in err.splitlines())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the sandbox

READ_ONLY = "Error: the catalog is read-only for queries — "
NO_FILES = "Error: queries cannot read or write files — "
NO_SETTINGS = "Error: queries cannot change settings — "
NO_EXTENSIONS = "Error: queries cannot load extensions — "

# (id, SQL with {out} = a scratch folder, expected start of stderr)
REFUSED = [
    ("update", "UPDATE items SET class_label = 'dog'",
     READ_ONLY + 'Invalid Input Error: Cannot execute statement of type "UPDATE"'),
    ("delete", "DELETE FROM items", READ_ONLY + 'Invalid Input Error: Cannot execute statement of type "DELETE"'),
    ("drop-table", "DROP TABLE items", READ_ONLY + 'Invalid Input Error: Cannot execute statement of type "DROP"'),
    ("drop-view", "DROP VIEW images", READ_ONLY + 'Invalid Input Error: Cannot execute statement of type "DROP"'),
    # writes on a view: DuckDB's Binder Error comes before its read-only check (a trial saw the bare Binder Error)
    ("delete-view", "DELETE FROM images",
     READ_ONLY + "a DELETE statement cannot change it (DuckDB: Binder Error: Can only delete from base table"),
    ("update-view", "UPDATE images SET label = 'dog'",
     READ_ONLY + "a UPDATE statement cannot change it (DuckDB: Binder Error: Can only update base table"),
    ("insert-view", "INSERT INTO images SELECT * FROM images", READ_ONLY + "a INSERT statement cannot change it"),
    ("insert", "INSERT INTO meta VALUES ('schema_version', '99')", READ_ONLY + "Invalid Input Error"),
    ("create-table", "CREATE TABLE t AS SELECT * FROM images", READ_ONLY + "Invalid Input Error"),
    ("create-view", "CREATE OR REPLACE VIEW images AS SELECT 1", READ_ONLY + "Invalid Input Error"),
    ("create-macro", "CREATE MACRO m(a) AS a + 1", READ_ONLY + "Invalid Input Error"),
    ("alter", "ALTER TABLE items ADD COLUMN x INT", READ_ONLY + "Invalid Input Error"),
    ("attach-memory", "ATTACH ':memory:' AS scratch", READ_ONLY),
    ("copy-to", "COPY images TO '{out}/x.csv'", NO_FILES + 'Permission Error: Cannot access file "{out}/x.csv"'),
    ("copy-tmp", "COPY (SELECT * FROM images) TO '/tmp/dsbuild-sandbox-x.csv'", NO_FILES + "Permission Error"),
    ("copy-parquet", "COPY images TO '{out}/x.parquet' (FORMAT parquet)", NO_FILES + "Permission Error"),
    ("export-database", "EXPORT DATABASE '{out}/dump'", NO_FILES + "Permission Error"),
    ("read-csv", "SELECT * FROM read_csv('/etc/passwd')", NO_FILES + 'Permission Error: Cannot access file "/etc/passwd"'),
    ("read-text", "SELECT * FROM read_text('/etc/passwd')", NO_FILES + "Permission Error"),
    ("read-blob", "SELECT * FROM read_blob('/etc/hostname')", NO_FILES + "Permission Error"),
    ("replacement-scan", "SELECT * FROM '/etc/passwd.csv'", NO_FILES + "Permission Error"),
    ("glob", "SELECT * FROM glob('/etc/*')", NO_FILES + "Permission Error"),
    ("http", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')", NO_FILES + "Permission Error"),
    ("attach-file", "ATTACH '{out}/other.duckdb' AS other", NO_FILES + "Permission Error"),
    ("install", "INSTALL httpfs", NO_FILES + "Permission Error"),
    ("create-secret", "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", NO_FILES + "Permission Error"),
    ("load", "LOAD httpfs", NO_EXTENSIONS + "Permission Error: Loading external extensions is disabled through configuration"),
    ("load-path", "LOAD '{out}/evil.duckdb_extension'", NO_EXTENSIONS + "Permission Error"),
    ("set-external-access", "SET enable_external_access = true",
     NO_SETTINGS + "Invalid Input Error: Cannot change configuration"),
    ("reset-external-access", "RESET enable_external_access", NO_SETTINGS),
    ("unlock", "SET lock_configuration = false", NO_SETTINGS),
    ("memory-limit", "SET memory_limit = '100GB'", NO_SETTINGS),
    ("temp-directory", "SET temp_directory = '{out}/spill'", NO_SETTINGS),
    ("pragma-threads", "PRAGMA threads = 8", NO_SETTINGS),
    ("pragma-profiling", "PRAGMA enable_profiling", NO_SETTINGS),
    ("pragma-profile-output", "PRAGMA profiling_output = '{out}/profile.txt'", NO_SETTINGS),
]


@pytest.mark.parametrize("sql, expected", [pytest.param(s, e, id=i) for i, s, e in REFUSED])
def test_sandbox_refuses(project: Project, capsys, tmp_path: Path, sql: str, expected: str) -> None:
    before_hash, before_tree = sha256(project.catalog), tree(project.root)
    rc, out, err = run(project, capsys, sql.format(out=tmp_path))
    assert rc == 1
    assert out == ""
    assert err.startswith(expected.format(out=tmp_path)), err
    assert error_lines(err) == 1
    assert sha256(project.catalog) == before_hash
    assert tree(project.root) == before_tree
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/dsbuild-sandbox-x.csv").exists()


@pytest.mark.parametrize(
    "sql",
    ["CHECKPOINT", "VACUUM", "CREATE TEMP TABLE t AS SELECT * FROM images", "BEGIN TRANSACTION",
     "PRAGMA database_size", "SELECT * FROM duckdb_settings()"],  # several statements: refused (test_first_hour)
)
def test_accepted_statements_change_nothing(project: Project, capsys, sql: str) -> None:
    """What the sandbox lets through is harmless: the catalog stays byte for byte the same."""
    before_hash, before_tree = sha256(project.catalog), tree(project.root)
    rc, _, err = run(project, capsys, sql, "--format", "csv")
    assert rc == 0, err
    assert sha256(project.catalog) == before_hash
    assert tree(project.root) == before_tree


def test_sandbox_settings_are_locked_off(project: Project) -> None:
    df = sandboxed_query(project.catalog, "SELECT name, value FROM duckdb_settings() WHERE name IN "
                         "('enable_external_access', 'lock_configuration', 'autoload_known_extensions', "
                         "'autoinstall_known_extensions', 'allow_community_extensions', 'allow_unsigned_extensions') ORDER BY name")
    assert dict(zip(df["name"], df["value"])) == {
        "allow_community_extensions": "false", "allow_unsigned_extensions": "false",
        "autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
        "enable_external_access": "false", "lock_configuration": "true",
    }


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("selec 1", 'Error: Parser Error: syntax error at or near "selec"'),
        ("select label from imagez", "Error: no table or view named 'imagez' in the catalog (did you mean 'images'?)"),
        ("select nope from images", 'Error: Binder Error: Referenced column "nope" not found in FROM clause!'),
        ("select 'x'::int", "Error: Conversion Error: Could not convert string 'x' to INT32"),
    ],
)
def test_sql_errors_show_duckdb_message(project: Project, capsys, sql: str, expected: str) -> None:
    rc, out, err = run(project, capsys, sql)
    assert rc == 1
    assert out == ""
    assert err.startswith(expected), err
    assert error_lines(err) == 1


def test_an_unknown_table_or_view_is_named_with_the_closest_of_the_catalog(project: Project, capsys,
                                                                          tmp_path: Path) -> None:
    # Trial 9: `current_labels` got DuckDB's guess "duckdb_tables" (a system table). The catalog's own tables, views
    # and named queries (the project's too) are the candidates; the pointer into the SQL stays.
    shutil.copyfile(project.manifest, tmp_path / "datasets.toml")
    (tmp_path / "catalog/queries").mkdir(parents=True)
    (tmp_path / "catalog/queries/my_cats.sql").write_text("-- Only cats\nselect * from images where label = 'cat'\n")
    views = ", ".join(sandboxed_query(project.catalog, "select table_name from information_schema.tables where "
                                      "table_type = 'VIEW' order by 1")["table_name"])
    assert {"images", "label_issues", "runs", "conflicts"} <= set(views.split(", "))
    tail = f" — the catalog's views: {views}; `dsbuild query --list` lists the named queries\n\n"
    args = ["query", "-q", "-m", str(tmp_path / "datasets.toml"), "--catalog", str(project.catalog)]
    cases = [
        ("select * from current_labels", "no table or view named 'current_labels' in the catalog"),
        ("select label from imags where 1 = 1", "no table or view named 'imags' in the catalog (did you mean 'images'?)"),
        ("select * from main.label_isues", "no table or view named 'label_isues' in the catalog (did you mean "
                                           "'label_issues'?)"),
        ("select * from label_conflicts", "no table or view named 'label_conflicts' in the catalog (did you mean the "
                                          "named query @label_conflicts? it runs on its own: "
                                          "`dsbuild query @label_conflicts`)"),
        ("select * from my_cats", "no table or view named 'my_cats' in the catalog (did you mean the named query "
                                  "@my_cats? it runs on its own: `dsbuild query @my_cats`)"),
    ]
    for sql, head in cases:
        assert main([*args, sql]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"Error: {head}{tail}LINE 1: {sql}\n"), err
        assert "duckdb_" not in err and error_lines(err) == 1


def test_syntax_error_points_at_the_sql(project: Project, capsys) -> None:
    rc, _, err = run(project, capsys, "select label, count(*) frm images group by all")
    assert rc == 1
    assert "LINE 1: select label, count(*) frm images group by all" in err


# --------------------------------------------------------------------------- output formats

COUNTS = "select label, split, count(*) as n from images where status = 'ok' group by all order by label, split"
EXPECTED_COUNTS = [("cat", "train", 3), ("cat", "valid", 1), ("cup", "train", 5), ("cup", "valid", 1)]


def test_counts_are_what_was_built(project: Project) -> None:
    df = sandboxed_query(project.catalog, COUNTS)
    assert [tuple(r) for r in df.itertuples(index=False)] == EXPECTED_COUNTS
    by_status = sandboxed_query(
        project.catalog, "select status, coalesce(reason, '-') as reason, count(*) n from images group by all order by all")
    assert [tuple(r) for r in by_status.itertuples(index=False)] == [
        ("duplicate", "exact duplicate", 1), ("duplicate", "near duplicate", 1), ("ok", "-", 10),
        ("rejected", "not an image", 1), ("rejected", "too small", 1),
    ]


def test_format_csv(project: Project, capsys) -> None:
    rc, out, err = run(project, capsys, COUNTS, "--format", "csv")
    assert rc == 0 and err == ""
    rows = list(csv.reader(io.StringIO(out, newline="")))
    assert rows[0] == ["label", "split", "n"]
    assert [(a, b, int(c)) for a, b, c in rows[1:]] == EXPECTED_COUNTS


def test_format_json(project: Project, capsys) -> None:
    rc, out, err = run(project, capsys, COUNTS, "--format", "json")
    assert rc == 0 and err == ""
    assert json.loads(out) == [{"label": a, "split": b, "n": c} for a, b, c in EXPECTED_COUNTS]
    rc, out, _ = run(project, capsys, "select * from images where false", "--format", "json")
    assert rc == 0 and json.loads(out) == []


def test_format_json_nulls_and_types(project: Project, capsys) -> None:
    rc, out, _ = run(project, capsys, "select image_id, width, reason, status from images where status = 'rejected' "
                     "order by reason", "--format", "json")
    assert rc == 0
    rows = json.loads(out)
    # a rejected image keeps its declared size (16 px: too small); a file that is no image has none
    assert [(r["status"], r["reason"], r["width"]) for r in rows] == [("rejected", "not an image", None),
                                                                     ("rejected", "too small", 16)]


def test_format_table(project: Project, capsys) -> None:
    rc, out, _ = run(project, capsys, COUNTS)  # table is the default
    assert rc == 0
    lines = [line for line in out.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in lines]
    assert cells == [[a, b, str(c)] for a, b, c in EXPECTED_COUNTS]
    assert "label" in out.splitlines()[1] and "\x1b[" not in out  # header row; no colour codes when not a terminal


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_out_file(project: Project, capsys, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"counts.{fmt}"
    rc, out, err = run(project, capsys, COUNTS, "--format", fmt, "--out", str(target))
    assert rc == 0
    assert out == ""
    assert err.strip() == f"wrote 4 rows to {target}"
    text = target.read_text(encoding="utf-8")
    if fmt == "csv":
        assert list(csv.reader(io.StringIO(text, newline="")))[1:] == [[a, b, str(c)] for a, b, c in EXPECTED_COUNTS]
    elif fmt == "json":
        assert [tuple(r.values()) for r in json.loads(text)] == EXPECTED_COUNTS
    else:
        assert "cup" in text and "valid" in text
    assert list(tmp_path.iterdir()) == [target]  # written atomically: no temp file left


# --------------------------------------------------------------------------- named queries


def test_shipped_queries_are_the_builtins() -> None:
    """The built-in queries are shipped once, inside the package; this repository's project adds no copies."""
    assert {"class_balance", "rejects", "label_conflicts", "duplicates", "split_leakage", "builds"} <= set(SHIPPED_QUERIES)
    assert not (REPO / "catalog" / "queries").exists()
    assert set(list_named_queries(REPO)) == set(SHIPPED_QUERIES)


def test_a_project_query_never_shadows_a_builtin(project: Project, capsys, tmp_path: Path) -> None:
    """A project file with a built-in's name is an error naming it (never silently ignored, never silently used)."""
    shutil.copyfile(project.manifest, tmp_path / "datasets.toml")
    mine = tmp_path / "catalog/queries/class_balance.sql"
    mine.parent.mkdir(parents=True)
    mine.write_text("-- my edit\nselect 1 as n\n")
    args = ["query", "-m", str(tmp_path / "datasets.toml"), "--catalog", str(project.catalog)]
    for extra in (["@class_balance"], ["--list"]):
        assert main([*args, *extra]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err == (f"Error: {mine} has the name of a built-in query — rename it (e.g. "
                                     "my_class_balance.sql): a built-in is never replaced (`dsbuild query --list` shows them)\n")
    assert main([*args, "@rejects", "--format", "csv"]) == 0  # other queries still run
    capsys.readouterr()


@pytest.mark.parametrize("name", SHIPPED_QUERIES)
def test_every_named_query_runs(project: Project, capsys, name: str) -> None:
    rc, out, err = run(project, capsys, f"@{name}", "--format", "json")
    assert rc == 0, err
    rows = json.loads(out)
    sql = (REPO / "dsbuild/catalog/queries" / f"{name}.sql").read_text()
    assert len(rows) == len(sandboxed_query(project.catalog, sql))


def test_class_balance(project: Project, capsys) -> None:
    rc, out, _ = run(project, capsys, "@class_balance", "--format", "json")
    assert rc == 0
    rows = json.loads(out)
    assert [(r["dataset"], r["label"], r["split"], r["images"]) for r in rows] == [("pets", *c) for c in EXPECTED_COUNTS]
    assert [r["pct_of_split"] for r in rows] == [37.5, 50.0, 62.5, 50.0]


def test_named_queries_find_the_planted_problems(project: Project, capsys) -> None:
    rejects = json.loads(run(project, capsys, "@rejects", "--format", "json")[1])
    assert sorted((r["reason"], r["images"]) for r in rejects) == [("not an image", 1), ("too small", 1)]
    conflicts = json.loads(run(project, capsys, "@label_conflicts", "--format", "json")[1])
    assert [(c["n_images"], c["labels"]) for c in conflicts] == [(2, ["cat", "cup"])]
    dups = json.loads(run(project, capsys, "@duplicates", "--format", "json")[1])
    assert sorted(Path(d["origin"]).name for d in dups) == sorted(["cat0-again.jpg", "cat0.jpg", "cat1.png", "cat-in-cups.png"])
    assert json.loads(run(project, capsys, "@split_leakage", "--format", "json")[1]) == []
    builds = json.loads(run(project, capsys, "@builds", "--format", "json")[1])
    assert [(b["build_id"], b["outcome"]) for b in builds] == [(1, "ok")]


def test_list_named_queries(project: Project, capsys) -> None:
    rc, out, _ = run(project, capsys, "--list", "--format", "csv")
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    listed = {r["name"]: r["description"] for r in rows}
    assert set(listed) == {f"@{n}" for n in SHIPPED_QUERIES}
    for name in SHIPPED_QUERIES:
        first = (REPO / "dsbuild/catalog/queries" / f"{name}.sql").read_text().splitlines()[0]
        assert listed[f"@{name}"] == first.lstrip("- ").strip() != ""
    assert list_named_queries(project.root) == {k[1:]: v for k, v in listed.items()}


def test_project_queries_shadow_and_extend_builtins(project: Project, capsys, tmp_path: Path) -> None:
    shutil.copyfile(project.manifest, tmp_path / "datasets.toml")
    (tmp_path / "catalog/queries").mkdir(parents=True)
    (tmp_path / "catalog/queries/cats.sql").write_text("-- Only cats\nselect count(*) as n from images where label = 'cat'\n")
    args = ["query", "-m", str(tmp_path / "datasets.toml"), "--catalog", str(project.catalog)]
    assert main([*args, "@cats", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "7"]
    assert main([*args, "--list", "--format", "csv"]) == 0
    assert "@cats,Only cats" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arg, rc_want, expected",
    [
        ("@class_balanse", 1, "Error: no named query '@class_balanse' (did you mean '@class_balance'?) — known: @builds, "
                              "@class_balance, @duplicates, @label_conflicts, @quality, @rejects, @similar, @split_leakage\n"),
        ("@nothing_like_it", 1, "Error: no named query '@nothing_like_it' — known: @builds, "),
        ("@../../etc/passwd", 1, "Error: bad query name '@../../etc/passwd' — names use letters, digits, '_' and '-'\n"),
        ("", 2, "Error: give SQL or @name — e.g. dsbuild query \"select label, count(*) from images group by all\"\n"),
        ("   ", 1, "Error: empty query — give SQL or @name (see `dsbuild query --list`)\n"),
    ],
)
def test_bad_query_arguments(project: Project, capsys, arg: str, rc_want: int, expected: str) -> None:
    rc, out, err = run(project, capsys, arg)
    assert rc == rc_want
    assert out == ""
    assert err.startswith(expected)


# --------------------------------------------------------------------------- timeout, missing and busy catalogs


@pytest.mark.parametrize(
    "sql",
    ["select count(*) from range(10000000000)",
     "select sum(a.range * b.range) from range(1000000) a, range(1000000) b"],
    ids=["huge-range", "cross-join"],
)
def test_timeout_stops_a_runaway_query(project: Project, capsys, sql: str) -> None:
    t0 = time.monotonic()
    rc, out, err = run(project, capsys, "--timeout", "0.5", sql)
    elapsed = time.monotonic() - t0
    assert rc == 1
    assert out == ""
    assert err == "Error: query ran longer than 0.5 s and was stopped — narrow it, or raise --timeout\n"
    assert elapsed < 8, f"took {elapsed:.1f} s to stop"
    assert run(project, capsys, "select 42 as x", "--format", "csv")[1].split() == ["x", "42"]  # still usable


@pytest.mark.parametrize("sig, code, message", [
    (signal.SIGINT, 130, "Error: query interrupted\n"),
    (signal.SIGTERM, 143, "Error: terminated (SIGTERM) — everything finished so far is kept; run the command again\n"),
])
def test_ctrl_c_or_sigterm_during_a_long_query_is_a_one_line_stop(project: Project, sig: int, code: int,
                                                                  message: str) -> None:
    """DuckDB runs the signal handler itself while a statement runs and raises RuntimeError('Query interrupted')
    instead of the KeyboardInterrupt: `dsbuild query` ended with that traceback and exit 1."""
    def start(sql: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(project.manifest), "query", "--timeout",
                                 "600", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))

    # The CPU time a whole quick query takes (start-up, imports, opening the catalog); the long statement runs once
    # the process has used a second more than that (CPU time, not wall time: the same on a loaded machine).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start("select 1").communicate(timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    startup = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    proc = start("select count(*) from range(100000000000) t(x) where x % 7 = 3")
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and _cpu_seconds(proc.pid) < startup + 1:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (code, "", message)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_missing_catalog_says_to_build(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "datasets.toml"
    manifest.write_text(MANIFEST)
    rc = main(["query", "-m", str(manifest), "select 1"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err == f"Error: no catalog at {tmp_path.resolve()}/catalog/dsbuild.duckdb — run `dsbuild build` first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.toml"]  # no catalog was created by asking


def test_not_a_catalog(project: Project, tmp_path: Path, capsys) -> None:
    fake = tmp_path / "fake.duckdb"
    fake.write_bytes(b"not a database at all" * 100)
    rc = main(["query", "-m", str(project.manifest), "--catalog", str(fake), "select 1"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith("Error: ")
    assert "Traceback" not in err
    assert str(fake) in err
    assert fake.read_bytes() == b"not a database at all" * 100


def test_query_works_while_a_build_holds_the_lock(project: Project, capsys) -> None:
    with BuildLock(project.catalog, command="dsbuild build"):
        rc, out, _ = run(project, capsys, "select count(*) as n from images", "--format", "csv")
        assert rc == 0 and out.split() == ["n", "14"]
        assert main(["build", "-q", "-m", str(project.manifest)]) == 1  # a second build is refused
        err = capsys.readouterr().err
        assert err == (f"Error: catalog {project.catalog} is locked by PID {os.getpid()} (dsbuild build is running) — "
                       "wait for it to finish, or use another catalog with --catalog\n")


def test_the_lock_error_names_the_command_that_holds_the_catalog(project: Project, capsys) -> None:
    """The fresh-user trial: `mislabels` held the catalog and a build was told "(a build is running)"."""
    with BuildLock(project.catalog, command="dsbuild mislabels"):
        assert main(["build", "-q", "-m", str(project.manifest)]) == 1
        err = capsys.readouterr().err
    assert err == (f"Error: catalog {project.catalog} is locked by PID {os.getpid()} (dsbuild mislabels is running) — "
                   "wait for it to finish, or use another catalog with --catalog\n")
    # A holder that did not say what it runs (an older dsbuild): no guess.
    with BuildLock(project.catalog):
        assert main(["build", "-q", "-m", str(project.manifest)]) == 1
        err = capsys.readouterr().err
    assert f"is locked by PID {os.getpid()} (another dsbuild command is running) — wait" in err


@contextmanager
def writer_holding(catalog: Path, copy: Path, script: str) -> Iterator[subprocess.Popen]:
    """A copy of ``catalog`` at ``copy``, held open by another process that ran ``script`` (``sys.argv[1]`` is the
    copy) and then sleeps; killed on exit."""
    shutil.copyfile(catalog, copy)
    holder = subprocess.Popen([sys.executable, "-c", f"{script}; print('ready', flush=True); time.sleep(60)", str(copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_query_while_a_dsbuild_writer_has_the_file_open_names_its_command(project: Project, capsys,
                                                                          tmp_path: Path) -> None:
    """A writer holds the lock and the open file (as a build does between its writes): `query` names it."""
    copy = tmp_path / "busy.duckdb"
    with writer_holding(project.catalog, copy, "import sys, time; from dsbuild.catalog import BuildLock, Catalog; "
                        "lock = BuildLock(sys.argv[1], command='dsbuild train'); lock.acquire(); "
                        "cat = Catalog.open(sys.argv[1])") as holder:
        rc = main(["query", "-m", str(project.manifest), "--catalog", str(copy), "select 1"])
        out, err = capsys.readouterr()
        assert rc == 1 and out == ""
        assert err == (f"Error: catalog {copy} is busy: process {holder.pid} is writing it (dsbuild train is running) — "
                       "wait for it to finish and try again\n")


def test_query_on_a_catalog_open_for_writing_says_busy(project: Project, capsys, tmp_path: Path) -> None:
    copy = tmp_path / "busy.duckdb"
    with writer_holding(project.catalog, copy, "import duckdb, sys, time; con = duckdb.connect(sys.argv[1])") as holder:
        rc = main(["query", "-m", str(project.manifest), "--catalog", str(copy), "select 1"])
        out, err = capsys.readouterr()
        assert rc == 1 and out == ""
        # Not a dsbuild writer (no lock file names it): no guess at what it runs.
        assert err == f"Error: catalog {copy} is busy: process {holder.pid} is writing it — wait for it to finish and try again\n"
        with pytest.raises(CatalogBusy):
            sandboxed_query(copy, "select 1")
    assert sandboxed_query(copy, "select count(*) as n from images")["n"].tolist() == [14]


# --------------------------------------------------------------------------- the public views


@pytest.mark.parametrize("view", sorted(CONTRACT))
def test_public_view_columns(project: Project, view: str) -> None:
    columns = list(sandboxed_query(project.catalog, f"select * from {view} limit 0").columns)
    missing = [c for c in CONTRACT[view] if c not in columns]
    assert missing == [], f"{view} lacks {missing}"


def test_images_view_values(project: Project) -> None:
    df = sandboxed_query(project.catalog, "select * from images")
    assert set(df["dataset"]) == {"pets"}
    assert set(df["status"]) <= {"ok", "rejected", "duplicate", "failed"}
    assert df["image_id"].is_unique
    ok = df[df["status"] == "ok"]
    assert set(ok["split"]) <= {"train", "valid", "test"}
    assert all(Path(p).is_file() for p in ok["path"])
    assert all(Path(o).is_file() and Path(o).is_relative_to(project.root / "photos") for o in df["origin"])
    assert (ok["label"] == ok["original_label"]).all()
    assert set(ok["format"]) == {"JPEG", "PNG"}
    assert sorted(zip(ok["width"], ok["height"]))[-2:] == [(64, 64), (80, 80)]
    for rec in ok.itertuples():
        assert hashlib.sha256(Path(rec.path).read_bytes()).hexdigest() == rec.sha256
        assert rec.bytes == Path(rec.path).stat().st_size
    rejected = df[df["status"] == "rejected"].sort_values("reason")
    assert [Path(o).name for o in rejected["origin"]] == ["notes.jpg", "tiny.png"]


def test_empty_views_before_training(project: Project) -> None:
    assert sandboxed_query(project.catalog, "select count(*) as n from runs")["n"].tolist() == [0]
    assert sandboxed_query(project.catalog, "select count(*) as n from label_issues")["n"].tolist() == [0]


def test_library_sandbox_errors_are_dsbuild_errors(project: Project) -> None:
    with pytest.raises(DsbuildError, match=r"^the catalog is read-only for queries — "):
        sandboxed_query(project.catalog, "DELETE FROM items")
    with pytest.raises(DsbuildError, match=r"^queries cannot read or write files — "):
        sandboxed_query(project.catalog, "select * from read_text('/etc/passwd')")


def test_label_conflicts_names_the_source_files_not_the_store(project: Project, capsys) -> None:
    """Fresh-user trial 10, L9: @label_conflicts listed `paths`, two identical store paths
    (catalog/store/0e/0ef6….jpg twice), so which of the user's files conflict took another query. It lists the
    origins, as @duplicates and @rejects do, each with its label, in image_ids order."""
    conflicts = json.loads(run(project, capsys, "@label_conflicts", "--format", "json")[1])
    (c,) = conflicts
    assert "paths" not in c
    with Catalog.open_readonly(project.catalog) as cat:
        members = cat.df("SELECT image_id, label, origin FROM images WHERE dataset = 'pets' AND list_contains(?, "
                         "image_id) ORDER BY image_id", [c["image_ids"]])
    assert c["origins"] == [f"{lab}: {o}" for lab, o in zip(members["label"], members["origin"])]
    assert all(Path(o).is_file() and project.catalog.parent not in Path(o).parents for o in members["origin"])
    assert sorted(Path(o.split(": ", 1)[1]).name for o in c["origins"]) == ["cat-in-cups.png", "cat1.png"]
