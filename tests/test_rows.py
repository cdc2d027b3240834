"""The schema in one place: the rows dsbuild writes are the tables its migrations create; schema 4's names."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from dsbuild.catalog import Catalog
from dsbuild.catalog.schema import MIGRATIONS, SCHEMA_VERSION
from dsbuild.rows import (BLOB_COLUMNS, FETCH_COLUMNS, ISSUE_COLUMNS, ITEM_COLUMNS, LABEL_EVENT_COLUMNS,
                          LABEL_ISSUE_COLUMNS, REPORT_COLUMNS, issue_frame, label_event_frame)


def columns(cat: Catalog, table: str) -> list[str]:
    return cat.df(f"DESCRIBE {table}")["column_name"].tolist()


def test_row_columns_are_the_tables_columns(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "c.duckdb") as cat:
        assert columns(cat, "blobs") == list(BLOB_COLUMNS)
        assert columns(cat, "fetches") == list(FETCH_COLUMNS)
        assert columns(cat, "issue_rows") == list(ISSUE_COLUMNS)
        assert columns(cat, "label_events") == list(LABEL_EVENT_COLUMNS)
        # items: what a build writes, plus what the regroup step computes later
        assert set(ITEM_COLUMNS) < set(columns(cat, "items"))
        assert set(columns(cat, "items")) - set(ITEM_COLUMNS) == {"quality_flags", "q_odd_size", "quality_issues",
                                                                 "outlier_score", "is_outlier", "leak_with"}
        assert columns(cat, "label_issues_all") == list(LABEL_ISSUE_COLUMNS) == columns(cat, "label_issues")
        assert set(REPORT_COLUMNS) <= set(LABEL_ISSUE_COLUMNS)


def test_frames_have_exactly_the_columns_and_fill_the_rest() -> None:
    issues = issue_frame(pd.DataFrame({"image_id": ["a", "b"], "kind": "label", "ood_score": [0.9, 0.25],
                                       "is_issue": [True, False]}), run_id="r1", dataset="d")
    assert list(issues.columns) == list(ISSUE_COLUMNS)
    assert issues["outlier_score"].tolist() == pytest.approx([0.1, 0.75])  # cleanlab's direction: low = unusual
    assert issues["suggested_label"].isna().all() and set(issues["run_id"]) == {"r1"}
    events = label_event_frame([{"image_id": "a", "action": "keep", "source": "review:x", "at": pd.Timestamp("2026-01-01")}],
                               dataset="d", first_id=7)
    assert list(events.columns) == list(LABEL_EVENT_COLUMNS)
    assert events.iloc[0]["event_id"] == 7 and events.iloc[0]["changed_at"] == pd.Timestamp("2026-01-01")


def test_a_version_2_catalog_gains_the_new_names_and_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    for version in (1, 2):
        for stmt in MIGRATIONS[version]:
            con.execute(stmt)
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    for image_id, flags in (("x1", "dark,blurry"), ("x2", ""), ("x3", None)):
        con.execute("INSERT INTO items (dataset, image_id, origin, source, class_label, status, first_seen, updated_at, "
                    "quality_flags) VALUES ('d', ?, '/x.png', 'folder', 'a', 'ok', now(), now(), ?)", [image_id, flags])
    con.execute("INSERT INTO model_runs (run_id, dataset, kind, started_at, status) VALUES ('r', 'd', 'mislabels', now(), 'ok')")
    con.execute("INSERT INTO issue_rows (run_id, dataset, image_id, kind, given_label, ood_score, is_issue, rank) "
                "VALUES ('r', 'd', 'x1', 'label', 'a', 0.8, true, 1), ('r', 'd', 'x2', 'conflict', 'a', NULL, true, 2)")
    con.close()
    assert SCHEMA_VERSION == 9
    with Catalog.open(path) as cat:
        assert cat.get_meta("schema_version") == "9"
        images = cat.df("SELECT image_id, quality_flags, quality_issues FROM images ORDER BY image_id")
        issues = cat.df("SELECT image_id, kind, ood_score, outlier_score, is_label_issue FROM label_issues ORDER BY rank")
    assert images["quality_flags"].tolist()[:2] == ["dark,blurry", ""]  # the old column stays
    assert [None if v is None or v is pd.NA else list(v) for v in images["quality_issues"]] == [["dark", "blurry"], [], None]
    assert issues["outlier_score"].iloc[0] == pytest.approx(0.2) and issues["ood_score"].iloc[0] == pytest.approx(0.8)
    assert issues["is_label_issue"].tolist() == [True, False]  # the conflict row is an issue, not a label issue


@pytest.mark.parametrize("arch_v3", [False, True], ids=["released-v3", "arch-branch-v3"])
def test_a_version_3_catalog_keeps_what_verification_learned_and_gains_the_new_names(tmp_path: Path, arch_v3: bool) -> None:
    """Schema 3 as released (verification's columns: format, size, bytes, warnings) opens and migrates to 4;
    so does a catalog of the unreleased arch branch that said 3 with cleanlab's names instead."""
    path = tmp_path / "v3.duckdb"
    con = duckdb.connect(str(path))
    for version in (1, 2):
        for stmt in MIGRATIONS[version]:
            con.execute(stmt)
    if arch_v3:
        con.execute("ALTER TABLE items ADD COLUMN quality_issues VARCHAR[]")
        con.execute("ALTER TABLE issue_rows ADD COLUMN outlier_score DOUBLE")
        con.execute("INSERT INTO items (dataset, image_id, origin, source, class_label, status, first_seen, updated_at, "
                    "quality_flags) VALUES ('d', 'x1', '/x.png', 'folder', 'a', 'rejected', now(), now(), 'dark')")
    else:
        for stmt in MIGRATIONS[3]:
            con.execute(stmt)
        con.execute("INSERT INTO items (dataset, image_id, origin, source, class_label, status, first_seen, updated_at, "
                    "quality_flags, format, width, height, bytes, warnings) VALUES ('d', 'x1', '/x.tga', 'folder', 'a', "
                    "'rejected', now(), now(), 'dark', 'TGA', 64, 48, 9262, ['decoder: a note'])")
    con.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    con.close()
    with Catalog.open(path) as cat:
        assert cat.get_meta("schema_version") == str(SCHEMA_VERSION)
        row = cat.df("SELECT format, width, height, bytes, warnings, quality_flags, quality_issues FROM images").iloc[0]
        assert set(ITEM_COLUMNS) < set(columns(cat, "items"))
    assert list(row["quality_issues"]) == ["dark"] and row["quality_flags"] == "dark"
    if arch_v3:
        assert row["format"] is None and list(row["warnings"]) == []
    else:
        assert (row["format"], row["width"], row["height"], row["bytes"]) == ("TGA", 64, 48, 9262)
        assert list(row["warnings"]) == ["decoder: a note"]
