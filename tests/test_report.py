"""Reports: the shared table/CSV/JSON renderer, the self-contained HTML pages and the PNG figures."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from skimage import data as skdata

from dsbuild.errors import DsbuildError
from dsbuild.render.figures import confusion_png, top_losses_png
from dsbuild.render.html import duplicates_html, mislabel_html, safe_link
from dsbuild.render.tables import RenderedTable, render_table
from dsbuild.render.thumbs import thumbnail

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos from skimage.data, saved the ways a catalog holds them (JPEG, PNG with alpha, EXIF-rotated JPEG)."""
    root = tmp_path_factory.mktemp("report_photos")
    out = {}
    for name, arr in {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
                      "rocket": skdata.rocket(), "camera": skdata.camera()}.items():
        out[name] = root / f"{name}.jpg"
        Image.fromarray(arr).save(out[name], quality=85)
    rgba = Image.fromarray(skdata.coffee()).convert("RGBA")
    rgba.putalpha(128)
    out["alpha"] = root / "alpha.png"
    rgba.save(out["alpha"])
    # A landscape photo stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view").
    wide = Image.fromarray(skdata.chelsea()).crop((0, 0, 300, 150))  # 300×150 as it should be seen
    exif = Image.Exif()
    exif[0x0112] = 6
    out["rotated"] = root / "rotated.jpg"
    wide.rotate(90, expand=True).save(out["rotated"], exif=exif.tobytes(), quality=90)  # stored 150×300
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out["broken"] = root / "broken.jpg"
    return out


class Collector(HTMLParser):
    """Tags and attributes of a page, plus the text of <script> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in_script = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        self._in_style = tag == "style"
        if tag == "script":
            self.scripts.append("")
        if tag == "style":
            self.styles.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif getattr(self, "_in_style", False):
            self.styles[-1] += data
        else:
            self.text.append(data)

    def attrs(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def parse(path: Path) -> tuple[str, Collector]:
    text = path.read_text(encoding="utf-8")
    page = Collector()
    page.feed(text)
    page.close()
    return text, page


def assert_self_contained(page: Collector, *, allowed_links: set[str]) -> None:
    for tag, attrs in page.tags:
        for name in ("src", "srcset", "poster", "data", "action"):
            if name in attrs:
                assert attrs[name].startswith("data:"), (tag, name, attrs[name][:60])
        if tag == "link":
            raise AssertionError(f"external resource: {attrs}")
        if "href" in attrs:
            assert attrs["href"] in allowed_links, attrs["href"]
    assert all(s.strip() for s in page.scripts)


# Classes that are hooks, not looks: named by neither the style sheet nor the page's script, on purpose.
UNSTYLED_HOOKS = {
    "sortable",  # the issues table (the script finds it by id)
    "reviewed",  # "reviewed: …" under a row's labels, muted by its other class
    "leak", "pair",  # a duplicate group spanning splits / a cross-split pair; the badge inside says so in colour
}


def assert_every_class_styled(page: Collector) -> None:
    """Every class the page emits is a selector of its style sheet, or a name its script uses (a hook) —
    a class renamed in one place and not the other (``b-ood`` → ``b-outlier``, trial 10) fails here."""
    css = "".join(page.styles)
    assert css.strip(), "the page has no inlined style sheet"
    selectors = set(re.findall(r"\.(-?[A-Za-z_][\w-]*)", re.sub(r"\{[^}]*\}", "{}", css)))
    script = "".join(page.scripts)
    emitted = {c for _, a in page.tags for c in (a.get("class") or "").split()}
    missing = sorted(c for c in emitted
                     if c not in selectors and c not in UNSTYLED_HOOKS and not re.search(rf"\b{re.escape(c)}\b", script))
    assert not missing, f"classes on the page with no style and no script use: {missing} (style sheet selectors: {sorted(selectors)})"


# --------------------------------------------------------------------------- render_table


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a1", "b2", "c3"],
        "label": ['say "cheese", please', "naïve\nsecond line", "[b]not markup[/b]"],
        "n": pd.array([1, None, 3], dtype="Int64"),
        "score": [0.1 + 0.2, np.nan, 1e-12],
        "ok": [True, False, True],
        "at": pd.to_datetime(["2024-05-01 12:00:00", None, "2024-05-02 08:30:15.250000"], format="ISO8601"),
    })


def test_csv_round_trips_through_pandas(tmp_path):
    df = frame()
    text = render_table(df, "csv")
    assert text.startswith("image_id,label,n,score,ok,at\n") and "\r" not in text  # LF, as pandas and DuckDB write
    back = pd.read_csv(io.StringIO(text), dtype={"n": "Int64"})
    back["at"] = pd.to_datetime(back["at"], format="ISO8601")
    assert list(back.columns) == list(df.columns)
    assert back["label"].tolist() == df["label"].tolist()
    assert back["n"].tolist() == df["n"].tolist()
    assert back["score"].iloc[0] == 0.1 + 0.2 and np.isnan(back["score"].iloc[1]) and back["score"].iloc[2] == 1e-12
    assert back["ok"].tolist() == [True, False, True]
    assert back["at"].iloc[0] == df["at"].iloc[0] and pd.isna(back["at"].iloc[1]) and back["at"].iloc[2] == df["at"].iloc[2]

    out = tmp_path / "out" / "rows.csv"
    assert render_table(df, "csv", out) is None
    assert out.read_bytes().decode("utf-8") == text
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.csv"]  # no temporary file left behind


def test_json_is_records_with_nulls_and_iso_dates(tmp_path):
    df = frame().assign(inf=[np.inf, 2.5, -np.inf], tags=[["x", "y"], [], ["z"]])
    text = render_table(df, "json")
    records = json.loads(text)
    assert records[1] == {"image_id": "b2", "label": "naïve\nsecond line", "n": None, "score": None, "ok": False,
                          "at": None, "inf": 2.5, "tags": []}
    assert records[0]["at"] == "2024-05-01T12:00:00" and records[2]["at"] == "2024-05-02T08:30:15.250000"
    assert records[0]["inf"] is None and records[0]["tags"] == ["x", "y"]
    back = pd.read_json(io.StringIO(text), orient="records", dtype=False)
    assert back["image_id"].tolist() == ["a1", "b2", "c3"]
    assert back["score"].iloc[0] == 0.1 + 0.2
    out = tmp_path / "rows.json"
    render_table(df, "json", out)
    assert json.loads(out.read_text(encoding="utf-8")) == records
    assert render_table(df.head(0), "json") == "[]\n"


def test_table_text_and_rich_rendering_never_read_markup(tmp_path):
    df = frame()
    text = render_table(df, "table", title="3 rows [red]x[/red]")
    assert isinstance(text, RenderedTable)
    assert "\x1b[" not in text  # stdout is not a terminal under pytest: plain text
    assert "3 rows [red]x[/red]" in text and "[b]not markup[/b]" in text
    assert "0.3" in text and "1e-12" in text and "2024-05-02 08:30:15.250000" in text
    header = next(line for line in text.splitlines() if "image_id" in line)
    assert all(col in header for col in df.columns)
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(text)  # the way the CLI's console prints it
    assert "[b]not markup[/b]" in buf.getvalue() and "3 rows [red]x[/red]" in buf.getvalue()
    out = tmp_path / "rows.txt"
    assert render_table(df, "table", out, title="3 rows [red]x[/red]") is None
    assert out.read_text(encoding="utf-8") == str(text)
    assert "(no rows)" in render_table(df.head(0), "table")


def test_render_table_errors(tmp_path):
    with pytest.raises(DsbuildError) as err:
        render_table(frame(), "xml")
    assert str(err.value) == "unknown format 'xml' — use one of table, csv, json"
    with pytest.raises(DsbuildError) as err:
        render_table(frame(), "csv", tmp_path)
    assert str(err.value) == f"{tmp_path} is a folder — give a file name for the output"


# --------------------------------------------------------------------------- thumbnails and links


def test_thumbnails_fit_128px_follow_exif_and_flatten_alpha(photos):
    big = thumbnail(photos["astronaut"])
    assert (big.width, big.height) == (128, 128) and not big.upscaled
    rotated = thumbnail(photos["rotated"])
    with Image.open(io.BytesIO(base64.b64decode(rotated.uri.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.size == (128, 64)  # shown upright: landscape, like the original
    alpha = thumbnail(photos["alpha"])
    assert alpha is not None and alpha.uri.startswith("data:image/jpeg;base64,")
    assert thumbnail(photos["broken"]) is None and thumbnail(photos["astronaut"].parent / "missing.jpg") is None


@pytest.mark.parametrize("url,link", [
    ("https://example.org/a.jpg?x=1&y=2", True),
    ("http://example.org/", True),
    ("javascript:alert(1)", False),
    (" JavaScript:alert(1)", False),
    ("java\tscript:alert(1)", False),
    ("data:text/html,<b>x</b>", False),
    ("https:///no-host", False),
    ("/home/me/photos/cat.jpg", False),
])
def test_safe_link(url, link):
    html_text = safe_link(url)
    assert html_text.startswith("<a href=") is link
    assert "<b>" not in html_text


# --------------------------------------------------------------------------- mislabel report


def issues_frame(photos) -> pd.DataFrame:
    return pd.DataFrame({
        "dataset": "demo",
        "image_id": ["a57f0c1e9b2d4401", "c0ffee00c0ffee02", "ca7ca7ca7ca7ca03", "70c3e7000000aa04", "5e3040e000000007"],
        "path": [str(photos["astronaut"]), str(photos["coffee"]), str(photos["rotated"]), str(photos["rocket"]),
                 str(photos["broken"])],
        "origin": ["https://example.org/astronaut.jpg?a=1&b=2", "javascript:alert(document.cookie)",
                   "/data/cats/chelsea.jpg", "https://example.org/rocket.jpg", '"><img src=x onerror=alert(1)>'],
        "given_label": [HOSTILE, "cup", "cat", "rocket", "cup"],
        "suggested_label": ["person", 'a"b', "person", "cat", None],
        "label_quality": [0.012, 0.2, np.nan, 0.4, 0.5],
        "rank": [1, 2, 3, 4, 5],
        "run_id": "demo-mislabels-1",
        "kind": ["label", "label", "conflict", "ood", "label"],
        "suggested_confidence": [0.97, 0.61, np.nan, 0.3, np.nan],
        "ood_score": [0.1, 0.2, np.nan, 0.93, 0.5],
        "current_label": [HOSTILE, "cup", "person", "rocket", "cup"],
    })


def test_mislabel_html_is_self_contained_escaped_and_complete(tmp_path, photos):
    issues = issues_frame(photos)
    out = mislabel_html(issues, dataset="demo <&>", out=tmp_path / "r" / "report.html",
                        run={"run_id": "demo-mislabels-1", "arch": "efficientnet_lite0", "n_images": 300,
                             "confusion": json.dumps([[5, 1], [2, 7]]), "classes": ["cat", HOSTILE]})
    text, page = parse(out)
    assert_self_contained(page, allowed_links={"https://example.org/astronaut.jpg?a=1&b=2", "https://example.org/rocket.jpg"})
    # Hostile strings are text, never markup: one script element (ours), no injected attributes.
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(page.attrs("script")) == 1
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert "javascript:" not in " ".join(a.get("href") or "" for a in page.attrs("a"))
    joined = "".join(page.text)
    assert "javascript:alert(document.cookie)" in joined and '"><img src=x onerror=alert(1)>' in joined
    # The CSP allows exactly this page's script, by hash.
    csp = next(a["content"] for a in page.attrs("meta") if a.get("http-equiv") == "Content-Security-Policy")
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp and "img-src data:" in csp
    # One row per issue, each with its thumbnail (or the placeholder for the unreadable file).
    rows = [a for a in page.attrs("tr") if "data-kind" in a]
    assert [r["data-id"] for r in rows] == issues["image_id"].tolist()
    assert [r["data-kind"] for r in rows] == ["label", "label", "conflict", "ood", "label"]
    assert rows[1]["data-suggested"] == 'a"b'
    thumbs = [a for a in page.attrs("img") if a["src"].startswith("data:image/jpeg")]
    assert len(thumbs) == 4 and text.count('class="noimg"') == 1
    assert "1 image(s) could not be read" in joined
    figures = [a for a in page.attrs("img") if a["src"].startswith("data:image/png")]
    assert len(figures) == 1  # the run's confusion matrix
    with Image.open(io.BytesIO(base64.b64decode(figures[0]["src"].split(",", 1)[1]))) as im:
        assert im.format == "PNG"
    sortable = [a for t, a in page.tags if t == "th" and "data-type" in a]
    assert len(sortable) == 8
    assert "dsbuild review demo &lt;&amp;&gt; --decisions decisions.csv" in text
    assert "efficientnet_lite0" in joined and "demo-mislabels-1" in joined
    assert "now: person" in joined  # relabelled since the run


def test_mislabel_html_says_which_flags_were_reviewed_already(tmp_path, photos):
    issues = issues_frame(photos).assign(reviewed=["relabelled by a person 2026-12-02", "", "kept by suggestions@0.9 2026-12-01",
                                                   "", ""])
    text, page = parse(mislabel_html(issues, dataset="demo", out=tmp_path / "r.html", run={"run_id": "r"}))
    joined = " ".join("".join(page.text).split())
    assert "already reviewed" in joined and "2 of 5 flagged images (1 by a person)" in joined, joined
    assert "reviewed: relabelled by a person 2026-12-02" in joined and "reviewed: kept by suggestions@0.9 2026-12-01" in joined


def test_every_class_of_the_mislabel_report_has_a_style(tmp_path, photos):
    # Every kind a run writes (outlier; ood from older runs), reviewed rows, thumbnails and a missing one, the figure.
    issues = issues_frame(photos).assign(kind=["label", "outlier", "conflict", "ood", "outlier"],
                                         reviewed=["relabelled by a person 2026-12-02", "", "", "", ""])
    text, page = parse(mislabel_html(issues, dataset="demo", out=tmp_path / "r.html",
                                     run={"run_id": "r", "confusion": json.dumps([[5, 1], [2, 7]]), "classes": ["a", "b"]}))
    assert text.count('class="badge b-outlier"') == 3  # the header's count and two rows
    assert_every_class_styled(page)


def test_mislabel_html_with_no_issues_and_minimal_columns(tmp_path):
    out = mislabel_html(pd.DataFrame(columns=["image_id", "given_label", "suggested_label"]), dataset="demo",
                        run={"run_id": "r"}, out=tmp_path / "empty.html")
    text, page = parse(out)
    assert_self_contained(page, allowed_links=set())
    assert "0 images" in text
    with pytest.raises(ValueError):
        mislabel_html(pd.DataFrame({"image_id": ["x"]}), dataset="d", run={}, out=tmp_path / "x.html")


# --------------------------------------------------------------------------- duplicates page


def test_duplicates_html_conflicts_first_and_marked(tmp_path, photos):
    a, c, r = str(photos["astronaut"]), str(photos["chelsea"]), str(photos["rocket"])
    groups = pd.DataFrame([
        # group g1: same rocket picture, one label, two splits (a leak)
        ("g1", "r1", r, "rocket", "train", "ok", 512, 512, 0, True),
        ("g1", "r2", r, "rocket", "valid", "duplicate", 256, 256, 4, False),
        # group g2: the same cat under two labels: a conflict (listed first)
        ("g2", "c2", c, HOSTILE, "train", "duplicate", 300, 200, 2, False),
        ("g2", "c1", c, "cat", "train", "ok", 451, 300, 0, True),
        ("g2", "c3", c, "cat", "train", "duplicate", 200, 133, 6, False),
        # group g3: plain duplicates
        ("g3", "a1", a, "person", "test", "ok", 512, 512, 0, True),
        ("g3", "a2", a, "person", "test", "duplicate", 512, 512, 1, False),
    ], columns=["dup_group", "image_id", "path", "label", "split", "status", "width", "height", "distance_to_rep",
                "is_representative"])
    out = duplicates_html(groups, dataset="demo", out=tmp_path / "dups.html")
    text, page = parse(out)
    assert_self_contained(page, allowed_links=set())
    assert page.attrs("script") == [] and HOSTILE not in text
    sections = [a for a in page.attrs("section")]
    assert [s["data-group"] for s in sections] == ["g2", "g1", "g3"]
    assert [s["class"] for s in sections] == ["group conflict", "group leak", "group"]
    assert len([a for a in page.attrs("img") if a["src"].startswith("data:image/jpeg")]) == len(groups)
    joined = "".join(page.text)
    assert f"label conflict: {HOSTILE} ≠ cat" in joined and "spans splits: train, valid" in joined
    # Within a group the representative comes first, then by distance.
    order = re.findall(r'<span class="mono">([^<]+)</span>', text)
    assert order == ["c1", "c2", "c3", "r1", "r2", "a1", "a2"]
    assert text.count("representative</span>") == 3
    assert_every_class_styled(page)


def test_duplicates_html_takes_catalog_columns_and_caps_groups(tmp_path, photos):
    p = str(photos["coffee"])
    rows = []
    for g in range(5):
        rows.append({"dup_group": f"g{g}", "image_id": f"i{g}a", "path": p, "label": "cup", "split": "train",
                     "status": "ok", "width": 10, "height": 10, "dup_distance": None, "dup_of": None})
        rows.append({"dup_group": f"g{g}", "image_id": f"i{g}b", "path": p, "label": "cup", "split": "train",
                     "status": "duplicate", "width": 10, "height": 10, "dup_distance": 3, "dup_of": f"i{g}a"})
    out = duplicates_html(pd.DataFrame(rows), dataset="demo", out=tmp_path / "d.html", max_groups=2)
    text, page = parse(out)
    assert_every_class_styled(page)
    assert len(page.attrs("section")) == 2
    assert "showing 2 of 5 groups" in text and text.count("representative</span>") == 2 and "distance 3" in text


# --------------------------------------------------------------------------- figures


def test_confusion_png(tmp_path):
    classes = [f"class {i}" for i in range(9)] + ["$x$ not math"]
    rng = np.random.default_rng(0)
    matrix = (np.eye(10, dtype=int) * 20 + rng.integers(0, 3, size=(10, 10))).tolist()
    out = confusion_png(matrix, classes, tmp_path / "cm.png")
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert 500 <= im.width <= 900 and 450 <= im.height <= 800
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    with pytest.raises(DsbuildError) as err:
        confusion_png([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "bad.png")
    assert str(err.value) == "the confusion matrix is 2×2 but there are 3 classes — it must be len(classes)×len(classes)"
    with pytest.raises(DsbuildError):
        confusion_png([[1, -2], [3, 4]], ["a", "b"], tmp_path / "bad.png")


def test_top_losses_png(tmp_path, photos):
    rows = pd.DataFrame({
        "path": [str(photos[k]) for k in ("astronaut", "coffee", "chelsea", "rocket", "broken", "camera")],
        "given_label": ["cat", "cup", HOSTILE, "rocket", "cup", "$5 camera$"],
        "suggested_label": ["person", "cat", "cat", "cup", "cat", "person"],
        "loss": [3.2, 0.1, 2.5, 4.0, 5.0, 0.2],
    })
    out = top_losses_png(rows, tmp_path / "top.png", n=4)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (2 * 220, 2 * 240)  # ⌈√4⌉ = 2 columns of 220×240 px tiles
    out = top_losses_png(rows.drop(columns="loss").assign(label_quality=[0.1] * 6), tmp_path / "top16.png")
    with Image.open(out) as im:
        assert im.size == (3 * 220, 2 * 240)  # 6 rows: 3 columns, 2 rows
    with Image.open(top_losses_png(rows.head(0), tmp_path / "none.png")) as im:
        assert im.format == "PNG"


def test_outputs_are_replaced_atomically(tmp_path, photos):
    out = tmp_path / "report.html"
    out.write_text("old report")
    before = datetime.now().timestamp()
    mislabel_html(issues_frame(photos).head(1), dataset="demo", run={"run_id": "r"}, out=out)
    assert out.stat().st_mtime >= before - 1 and "old report" not in out.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
