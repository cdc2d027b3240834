"""Whole builds of web datasets, end to end: engine → fetch → verify → store → catalog.

No mocks: each test starts a loopback fake search engine (``fake_engines.py``,
pages in Bing's real format) whose results point into a loopback image server
that misbehaves on purpose (``hostile_server.py``), writes a manifest into
``tmp_path``, runs ``dsbuild build`` in-process (the CLI, or the library's
``build``) against a real DuckDB file, and checks the ``fetch_log`` and
``images`` views, the server-side hit counts and what is left in the store.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import duckdb
import pytest
from fake_engines import FakeEngineServer, real_jpeg
from helpers import run_cli
from hostile_server import HostileServer

from dsbuild.pipeline import build
from dsbuild.progress import Progress, StageProgress
from dsbuild.sources.urls import normalize_url
from dsbuild.manifest import load_manifest

pytestmark = pytest.mark.timeout(60)

#: short limits so that every hostile route ends within a second or two
FAST_FETCH = {
    "connect_timeout": 1.0, "read_timeout": 0.5, "deadline": 2.0, "retries": 1, "backoff_base": 0.05,
    "retry_after_max": 2.0, "max_bytes": 1_000_000,
}

# route → (fetch outcome, fetch reason, transient, http status, image status, image reason)
# "same" = the same JPEG bytes as /same/a.jpg: one of them is ok, the others exact duplicates.
ALPHA: dict[str, tuple] = {
    "/img/coffee.jpg": ("ok", None, False, 200, "ok", None),
    "/img/chelsea.png": ("ok", None, False, 200, "ok", None),
    "/img/rocket.gif": ("ok", None, False, 200, "ok", None),
    "/same/a.jpg": ("ok", None, False, 200, "same", None),
    "/same/b.jpg": ("ok", None, False, 200, "same", None),
    "/unicode/café ü.jpg": ("ok", None, False, 200, "same", None),  # non-ASCII URL
    "/flaky/429/1/a.jpg": ("ok", None, False, 200, "same", None),  # 429 + Retry-After: 1, honoured, then ok
    "/html-as-jpeg.jpg": ("rejected", "not an image (html)", False, 200, "rejected", "not an image"),  # as verify says
    "/status/404": ("failed", "http 404", False, 404, "failed", "http 404"),
    "/status/500": ("failed", "http 500", True, 500, "failed", "http 500"),
    "/status/429?retry_after=30": ("failed", "http 429", True, 429, "failed", "http 429"),  # > retry_after_max
    "/flaky/500/2/b.jpg": ("failed", "http 500", True, 500, "failed", "http 500"),  # ok on the 3rd hit
    "/stall-body.jpg": ("failed", "timeout", True, 200, "failed", "timeout"),
    "/short.jpg": ("failed", "truncated body", True, 200, "failed", "truncated body"),
    "/reset.jpg": ("failed", "connection reset", True, 200, "failed", "connection reset"),
}
BETA: dict[str, tuple] = {
    "/img/rocket.webp": ("ok", None, False, 200, "ok", None),
    "/img/astronaut.bmp": ("ok", None, False, 200, "ok", None),
    "/img/coffee.tiff": ("ok", None, False, 200, "ok", None),
    "/redirect/loop-a": ("failed", "redirect loop", False, 302, "failed", "redirect loop"),
    "/redirect/to?url=file:///etc/passwd": ("rejected", "bad scheme", False, 302, "rejected", "bad scheme"),
    "/endless.jpg": ("rejected", "too large", False, 200, "rejected", "too large"),
    "/endless-unsized.jpg": ("rejected", "too large", False, 200, "rejected", "too large"),
    "/gzip-bomb.jpg": ("rejected", "too large", False, 200, "rejected", "too large"),
    "/noai.jpg": ("rejected", "noai", False, 200, "rejected", "noai"),
    "/bomb.png": ("ok", None, False, 200, "rejected", "decompression bomb"),  # fetched fine, refused by verify
}
TRANSIENT = {r for r, e in (ALPHA | BETA).items() if e[2]}
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".bmp": "BMP", ".tiff": "TIFF"}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def servers():
    """(fake engine, hostile image server), both on loopback, stopped after the test."""
    with HostileServer() as images, FakeEngineServer() as engine:
        yield engine, images


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


def write_manifest(folder: Path, datasets: dict[str, dict]) -> Path:
    """A manifest of ``datasets`` (name → settings; ``classes`` and ``fetch`` become sub-tables)."""
    lines = []
    for name, spec in datasets.items():
        spec = dict(spec)
        classes = spec.pop("classes")
        fetch = spec.pop("fetch", FAST_FETCH)
        lines.append(f"[datasets.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in spec.items()]
        lines.append(f"[datasets.{name}.classes]")
        # a class name that is no bare TOML key (café) is written quoted
        lines += [f"{k if k.isascii() and k.replace('_', 'a').replace('-', 'a').isalnum() else json.dumps(k)} = "
                  f"{toml_value(v)}" for k, v in classes.items()]
        lines.append(f"[datasets.{name}.dedup]")
        lines.append("near = false")  # exact duplicates only: the planted ones
        lines.append(f"[datasets.{name}.fetch]")
        lines += [f"{k} = {toml_value(v)}" for k, v in fetch.items()]
    path = folder / "datasets.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def web_dataset(engine: FakeEngineServer, *, engine_name: str = "bing", private: bool = True) -> dict:
    """A dataset whose classes alpha and beta search "alpha things" / "beta things" on the fake engine."""
    spec = {"engine": engine_name, "endpoint": engine.url, "per_query": 50,
            "classes": {"alpha": {"queries": ["alpha things"]}, "beta": {"queries": ["beta things"]}}}
    if private:
        spec["allow_private_hosts"] = True
    return spec


def plant(engine: FakeEngineServer, images: HostileServer, query: str, routes) -> None:
    """Make ``query`` return links to these image-server routes, in this order."""
    engine.plant(query, [images.url + r for r in routes])


def rows(manifest: Path, sql: str, params: list | None = None) -> list[dict]:
    """Rows of a read-only query on the manifest's catalog, as dicts (the connection is closed again)."""
    with duckdb.connect(str(load_manifest(manifest).catalog), read_only=True) as con:
        cur = con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def route_of(url: str, base: str) -> str:
    """The hostile server route a (normalised) catalog URL names, as written in ALPHA/BETA."""
    assert url.startswith(base), url
    return unquote(url[len(base):])


def hits(images: HostileServer) -> dict[str, int]:
    """Requests the image server has had so far, by decoded path (query strings ignored)."""
    return dict(Counter(list(images.requests)))


def new_hits(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def engine_queries(engine: FakeEngineServer) -> list[str]:
    """The ``q`` of every Bing results page the fake engine served."""
    from urllib.parse import parse_qs

    return [parse_qs(urlsplit(r).query).get("q", [""])[0] for r in list(engine.requests)
            if r.startswith("/images/async")]


def assert_store_clean(manifest: Path) -> set[str]:
    """Every file in the store decodes and is the blob of an ok/duplicate image; no temp files. Returns the shas."""
    from PIL import Image

    store = load_manifest(manifest).store
    referenced = {r["sha256"]: r["path"] for r in rows(
        manifest, "SELECT DISTINCT sha256, path FROM images WHERE status IN ('ok', 'duplicate')")}
    files = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    shas = set()
    for f in files:
        assert f.parent.name != ".incoming" and not f.name.startswith(".tmp-") and f.suffix != ".part", f
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        assert sha in referenced, f"{f} is in the store but no ok/duplicate image points at it"
        assert Path(referenced[sha]) == f
        with Image.open(f) as im:
            im.load()
        shas.add(sha)
    assert shas == set(referenced), "an ok/duplicate image points at a file that is not in the store"
    return shas


class RecordingProgress(Progress):
    """Records every stage with its total, how far it advanced and the last counts shown."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}
        self.notes: list[str] = []

    def stage(self, name: str, total: int | None) -> StageProgress:
        record = self.stages[name] = {"total": total, "done": 0, "counts": {}}

        class Stage(StageProgress):
            def advance(self, n: int = 1, **counts: int) -> None:
                record["done"] += n
                record["counts"] = counts

        return Stage()

    def note(self, text: str) -> None:
        self.notes.append(text)


def catalog_counts(manifest: Path, dataset: str) -> dict[str, int]:
    return {r["status"]: r["n"] for r in rows(
        manifest, "SELECT status, count(*) AS n FROM images WHERE dataset = ? GROUP BY ALL", [dataset])}


# --------------------------------------------------------------------------- a whole hostile build


def expected_routes(engine_name: str, table: dict[str, tuple]) -> dict[str, tuple]:
    if engine_name == "icrawler:bing":  # icrawler's BingParser keeps only links with ".jpg" (and cuts them there)
        return {r: e for r, e in table.items() if r.endswith(".jpg") and "?" not in r}
    return table


@pytest.mark.parametrize("engine_name", ["bing", "icrawler:bing"])
def test_hostile_build_catalogues_every_url_with_its_outcome(engine_name, servers, tmp_path, capsys):
    engine, images = servers
    plant(engine, images, "alpha things", ALPHA)
    plant(engine, images, "beta things", BETA)
    manifest = write_manifest(tmp_path, {"web": web_dataset(engine, engine_name=engine_name)})

    t0 = time.monotonic()
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, ""), err
    assert time.monotonic() - t0 < 30

    alpha, beta = expected_routes(engine_name, ALPHA), expected_routes(engine_name, BETA)
    expected = {**{r: ("alpha", "alpha things", rank, e) for rank, (r, e) in enumerate(alpha.items(), 1)},
                **{r: ("beta", "beta things", rank, e) for rank, (r, e) in enumerate(beta.items(), 1)}}

    # fetch_log: one row per URL, with its outcome, reason and provenance
    log = rows(manifest, "SELECT * FROM fetch_log WHERE dataset = 'web'")
    by_route = {route_of(r["url"], images.url): r for r in log}
    assert len(log) == len(by_route) == len(expected)
    assert set(by_route) == set(expected)
    for route, (label, query, rank, (outcome, reason, transient, status, _, _)) in expected.items():
        row = by_route[route]
        got = (row["outcome"], row["reason"], row["transient"], row["http_status"])
        assert got == (outcome, reason, transient, status), route
        assert (row["engine"], row["query"], row["rank"], row["label"]) == (engine_name, query, rank, label), route
        assert row["page_url"].startswith(engine.url + "/images/async?"), route
        assert row["fetched_at"] is not None and row["elapsed_s"] >= 0, route
        if outcome == "ok":
            assert row["sha256"] is not None or route == "/bomb.png", route
            assert row["bytes"] > 0 and row["content_type"].startswith("image/"), route
            ext = Path(urlsplit(route).path).suffix
            if ext in (".png", ".gif", ".webp", ".bmp", ".tiff"):
                assert row["content_type"] == f"image/{ext[1:]}", route
    # the request URL is what went on the wire: non-ASCII %-encoded
    uni = [r for r in log if "unicode" in r["url"]]
    assert [r["url"] for r in uni] == [normalize_url(images.url + "/unicode/café ü.jpg")]
    assert uni[0]["url"].isascii()
    # retries: transient errors were retried once (retries = 1), final ones were not
    attempts = {route: by_route[route]["attempts"] for route in by_route}
    for route in ("/status/500", "/flaky/500/2/b.jpg", "/stall-body.jpg", "/short.jpg", "/reset.jpg",
                  "/flaky/429/1/a.jpg"):
        if route in attempts:
            assert attempts[route] == 2, route
    for route in ("/status/404", "/status/429?retry_after=30", "/noai.jpg", "/html-as-jpeg.jpg", "/img/coffee.jpg"):
        if route in attempts:
            assert attempts[route] == 1, route
    if "/flaky/429/1/a.jpg" in by_route:  # Retry-After: 1 was waited for
        assert by_route["/flaky/429/1/a.jpg"]["elapsed_s"] >= 0.9
    if "/redirect/to?url=file:///etc/passwd" in by_route:  # the hop that was refused is the final URL
        assert by_route["/redirect/to?url=file:///etc/passwd"]["final_url"] == "file:///etc/passwd"
        assert by_route["/redirect/loop-a"]["final_url"] == images.url + "/redirect/loop-a"

    # images: one row per (label, URL), status + reason, provenance
    imgs = rows(manifest, "SELECT * FROM images WHERE dataset = 'web'")
    img_by_route = {route_of(r["origin"], images.url): r for r in imgs}
    assert len(imgs) == len(img_by_route) == len(expected)
    same = []
    for route, (label, query, rank, (_, _, _, _, status, reason)) in expected.items():
        im = img_by_route[route]
        assert (im["label"], im["original_label"], im["engine"], im["query"], im["rank"], im["source"]) == (
            label, label, engine_name, query, rank, "query"), route
        assert im["page_url"].startswith(engine.url + "/images/async?"), route
        if status == "same":
            same.append(im)
            continue
        assert (im["status"], im["reason"]) == (status, reason), route
        if status == "ok":
            assert im["format"] == FORMATS[Path(urlsplit(route).path).suffix], route
            assert Path(im["path"]).is_file() and im["split"] in ("train", "valid", "test"), route
            assert im["bytes"] == Path(im["path"]).stat().st_size == by_route[route]["bytes"], route
            assert im["width"] == 160 and im["height"] == 120 and im["sha256"] and im["phash"], route
        else:
            assert im["path"] is None and im["split"] is None, route
    # the same image at several URLs: stored once, one ok, the others exact duplicates of it
    assert len(same) >= 3
    assert len({im["sha256"] for im in same}) == 1 and len({im["path"] for im in same}) == 1
    [keeper] = [im for im in same if im["status"] == "ok"]
    for im in same:
        if im is not keeper:
            assert (im["status"], im["reason"], im["dup_of"]) == ("duplicate", "exact duplicate", keeper["image_id"])
        assert im["dup_group"] == keeper["dup_group"] is not None and not im["conflict"]

    # nothing bad in the store: only verified images, each once, no temp files
    shas = assert_store_clean(manifest)
    ok_routes = [r for r, (_, _, _, (_, _, _, _, st, _)) in expected.items() if st == "ok"]
    assert len(shas) == len(ok_routes) + 1  # + the one copy of the "same" image

    # every URL was requested (the first time) exactly as often as its attempts say
    served = hits(images)
    for route in expected:
        path = urlsplit(route).path
        if not route.startswith("/redirect/") and "?" not in route:
            assert served.get(path) == by_route[route]["attempts"], route


# --------------------------------------------------------------------------- private hosts


def test_loopback_endpoint_is_refused_without_allow_private_hosts(servers, tmp_path, capsys):
    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg"])
    plant(engine, images, "beta things", ["/img/chelsea.png"])
    manifest = write_manifest(tmp_path, {"web": web_dataset(engine, private=False)})

    code, out, err = run_cli(capsys, manifest, "build", "-q")

    assert code == 2 and out == ""
    assert "Traceback" not in err and err.startswith("Error: cannot build:")
    assert f"endpoint of engine 'bing' {engine.url} is a loopback/private address (127.0.0.1)" in err
    assert "set `allow_private_hosts = true`" in err
    assert engine.requests == [] and images.requests == []  # refused before any request
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.toml"]  # no catalog, no store, no lock


def test_a_tab_separated_url_list_is_built(servers, tmp_path, capsys):
    """Variant hunt finding 9: a .tsv list (url<TAB>label) had every line refused as 'contains control characters'."""
    _, images = servers
    (tmp_path / "a.tsv").write_text(f"url\tlabel\n{images.url}/img/coffee.jpg\ta\n{images.url}/img/chelsea.png\ta\n")
    (tmp_path / "b.txt").write_text(f"{images.url}/img/rocket.gif\n")
    manifest = write_manifest(tmp_path, {"lists": {"allow_private_hosts": True,
                                                   "classes": {"a": {"urls": "a.tsv"}, "b": {"urls": "b.txt"}}}})
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, ""), out + err
    assert "control characters" not in out
    got = rows(manifest, "SELECT label, status, count(*) AS n FROM images WHERE dataset = 'lists' GROUP BY ALL ORDER BY 1")
    assert got == [{"label": "a", "status": "ok", "n": 2}, {"label": "b", "status": "ok", "n": 1}]


def test_loopback_urls_are_refused_without_allow_private_hosts(servers, tmp_path, capsys):
    _, images = servers
    (tmp_path / "a.txt").write_text(f"{images.url}/img/coffee.jpg\n{images.url}/img/chelsea.png\n")
    (tmp_path / "b.txt").write_text(f"{images.url}/img/rocket.gif\nhttp://localhost:{images.port}/img/rocket.png\n")
    manifest = write_manifest(tmp_path, {"lists": {"classes": {"a": {"urls": "a.txt"}, "b": {"urls": "b.txt"}}}})

    code, out, err = run_cli(capsys, manifest, "build", "-q")

    assert (code, err) == (0, "")
    log = {r["url"]: r for r in rows(manifest, "SELECT url, outcome, reason, attempts, http_status FROM fetch_log")}
    assert len(log) == 4
    for url, r in log.items():
        # an IP literal is refused before the attempt; a name after resolving it, before connecting
        attempts = 1 if url.startswith("http://localhost") else 0
        assert (r["outcome"], r["reason"], r["attempts"], r["http_status"]) == ("rejected", "private address", attempts, None)
    assert images.requests == []  # nothing was sent, not even to "localhost"
    assert catalog_counts(manifest, "lists") == {"rejected": 4}
    assert assert_store_clean(manifest) == set()


def test_private_address_rows_and_the_empty_class_note_name_the_setting_that_allows_them(servers, tmp_path, capsys):
    """Default settings, URL lists on the test's own (loopback) server: every row says which host was refused and
    which setting allows it, and the class-level note names the reason, not only "N rejected"."""
    _, images = servers
    (tmp_path / "a.txt").write_text("".join(f"{images.url}/img/{n}\n" for n in ("coffee.jpg", "chelsea.png")))
    (tmp_path / "b.txt").write_text(f"http://localhost:{images.port}/img/rocket.png\n")
    manifest = write_manifest(tmp_path, {"lists": {"classes": {"a": {"urls": "a.txt"}, "b": {"urls": "b.txt"}}}})

    code, out, err = run_cli(capsys, manifest, "build")

    assert code == 0 and "Traceback" not in out + err, out + err
    details = {route_of(r["origin"], images.url) if "127.0.0.1" in r["origin"] else "localhost": r
               for r in rows(manifest, "SELECT origin, status, reason, detail FROM images")}
    hint = ("set allow_private_hosts = true in [datasets.lists] to fetch from your own network, "
            "or add its network to allowed_networks in [datasets.lists.fetch]")
    assert details["/img/coffee.jpg"]["detail"] == f"127.0.0.1 is a private or loopback address — {hint}"
    assert details["localhost"]["detail"] == f"localhost resolves to a private or loopback address — {hint}"
    assert {(r["status"], r["reason"]) for r in details.values()} == {("rejected", "private address")}
    said = " ".join(out.split())
    assert f"class 'a' has no accepted images (2 rejected: private address) — {hint}" in said, out
    assert f"class 'b' has no accepted images (1 rejected: private address) — {hint}" in said, out
    assert images.requests == []

    # The setting named does what the note says: the next build fetches them.
    manifest.write_text(manifest.read_text().replace("[datasets.lists.fetch]\n",
                                                     '[datasets.lists.fetch]\nallowed_networks = ["127.0.0.0/8", "::1"]\n'))
    code, out, err = run_cli(capsys, manifest, "build")
    assert code == 0, out + err
    assert catalog_counts(manifest, "lists") == {"ok": 3}


# --------------------------------------------------------------------------- re-runs and --retry-failed


def test_rebuild_fetches_nothing_new_and_retry_failed_retries_every_failure(servers, tmp_path, capsys):
    engine, images = servers
    plant(engine, images, "alpha things", ALPHA)
    plant(engine, images, "beta things", BETA)
    manifest = write_manifest(tmp_path, {"web": web_dataset(engine)})

    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    first = hits(images)
    searches = engine_queries(engine)
    assert sorted(set(searches)) == ["alpha things", "beta things"]
    images_before = rows(manifest, "SELECT image_id, status, reason, split, sha256 FROM images ORDER BY image_id")

    # 1. the same build again: no search, no download, nothing changes
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    assert new_hits(first, hits(images)) == {}
    assert engine_queries(engine) == searches
    assert rows(manifest, "SELECT image_id, status, reason, split, sha256 FROM images ORDER BY image_id") == images_before
    assert len(rows(manifest, "SELECT * FROM fetch_log")) == len(ALPHA) + len(BETA)

    # 2. --retry-failed: every failed download is requested again (a 404 and a redirect loop too: the user asked),
    # none of the rejected
    code, out, err = run_cli(capsys, manifest, "build", "-q", "--retry-failed")
    assert (code, err) == (0, "")
    again = new_hits(first, hits(images))
    assert set(again) == {urlsplit(r).path for r in TRANSIENT} | {"/status/404", "/redirect/loop-a", "/redirect/loop-b"}
    assert again["/redirect/loop-a"] == again["/redirect/loop-b"] == 1  # once round the loop, not retried within
    assert again["/flaky/500/2/b.jpg"] == 1  # the third hit answers with the image
    assert again["/status/500"] == 2 and again["/stall-body.jpg"] == 2  # retried within the build too
    status = {route_of(r["origin"], images.url): r for r in rows(manifest, "SELECT * FROM images")}
    assert status["/flaky/500/2/b.jpg"]["status"] in ("ok", "duplicate")  # the "same" JPEG: joins its group
    assert status["/flaky/500/2/b.jpg"]["dup_group"] == status["/same/a.jpg"]["dup_group"] is not None
    assert status["/flaky/500/2/b.jpg"]["path"] is not None
    for route in ("/noai.jpg", "/html-as-jpeg.jpg", "/bomb.png"):
        assert status[route]["status"] == "rejected" and route not in again
    assert (status["/status/404"]["status"], status["/status/404"]["reason"]) == ("failed", "http 404")
    assert (status["/redirect/loop-a"]["status"], status["/redirect/loop-a"]["reason"]) == ("failed", "redirect loop")
    for route in TRANSIENT - {"/flaky/500/2/b.jpg"}:
        assert status[route]["status"] == "failed", route
    latest = rows(manifest, """SELECT url, outcome, build_id FROM fetch_log WHERE url LIKE '%/flaky/500/%'
                               ORDER BY fetched_at""")
    assert [(r["outcome"], r["build_id"]) for r in latest] == [("failed", 1), ("ok", 3)]
    # earlier splits are kept
    after = {r["image_id"]: r for r in rows(manifest, "SELECT image_id, split FROM images")}
    assert all(after[r["image_id"]]["split"] == r["split"] for r in images_before if r["split"])

    # 3. --retry-failed once more: the URL that now succeeded is not fetched again
    before = hits(images)
    assert run_cli(capsys, manifest, "build", "-q", "--retry-failed")[0] == 0
    assert "/flaky/500/2/b.jpg" not in new_hits(before, hits(images))
    assert_store_clean(manifest)


def test_adding_a_query_fetches_only_the_new_links(servers, tmp_path, capsys):
    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg", "/img/chelsea.png", "/status/404"])
    plant(engine, images, "beta things", ["/img/rocket.webp", "/img/astronaut.bmp"])
    plant(engine, images, "gamma things", ["/img/rocket.webp", "/img/coffee.tiff", "/img/chelsea.png", "/img/rocket.gif"])
    spec = web_dataset(engine)
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    before = hits(images)
    searched = engine_queries(engine)

    spec["classes"]["beta"] = {"queries": ["beta things", "gamma things"]}
    write_manifest(tmp_path, {"web": spec})
    code, out, err = run_cli(capsys, manifest, "build", "-q")

    assert (code, err) == (0, "")
    assert set(engine_queries(engine)[len(searched):]) == {"gamma things"}  # only the new query is searched
    # rocket.webp: same URL already fetched for beta; chelsea.png: fetched before (for alpha) — neither again
    assert new_hits(before, hits(images)) == {"/img/coffee.tiff": 1, "/img/rocket.gif": 1}
    beta = {route_of(r["origin"], images.url): r for r in rows(
        manifest, "SELECT * FROM images WHERE label = 'beta'")}
    assert set(beta) == {"/img/rocket.webp", "/img/astronaut.bmp", "/img/coffee.tiff", "/img/chelsea.png",
                         "/img/rocket.gif"}
    assert beta["/img/rocket.webp"]["query"] == "beta things"  # first discovery kept
    assert beta["/img/coffee.tiff"]["query"] == "gamma things" and beta["/img/coffee.tiff"]["rank"] == 2
    # chelsea.png is now in two classes: stored once, flagged as a label conflict
    chelsea = rows(manifest, "SELECT label, status, conflict, path FROM images WHERE origin LIKE '%chelsea.png'")
    assert sorted(r["label"] for r in chelsea) == ["alpha", "beta"] and all(r["conflict"] for r in chelsea)
    assert len({r["path"] for r in chelsea}) == 1
    assert rows(manifest, "SELECT count(*) AS n FROM fetch_log WHERE url LIKE '%chelsea.png'") == [{"n": 1}]
    assert_store_clean(manifest)


def test_a_url_fetched_by_another_dataset_is_not_downloaded_again(servers, tmp_path, capsys):
    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg", "/img/chelsea.png"])
    plant(engine, images, "beta things", ["/img/rocket.webp"])
    (tmp_path / "more.txt").write_text(f"{images.url}/img/coffee.jpg\n{images.url}/img/astronaut.bmp\n")
    manifest = write_manifest(tmp_path, {
        "web": web_dataset(engine),
        "other": {"allow_private_hosts": True, "classes": {
            "x": {"urls": "more.txt"}, "y": {"queries": ["beta things"]}}, "endpoint": engine.url},
    })
    assert run_cli(capsys, manifest, "build", "-q", "web")[0] == 0
    before = hits(images)
    assert run_cli(capsys, manifest, "build", "-q", "other")[0] == 0
    assert new_hits(before, hits(images)) == {"/img/astronaut.bmp": 1}
    other = {route_of(r["origin"], images.url): r for r in rows(manifest, "SELECT * FROM images WHERE dataset = 'other'")}
    assert {k: v["status"] for k, v in other.items()} == {
        "/img/coffee.jpg": "ok", "/img/astronaut.bmp": "ok", "/img/rocket.webp": "ok"}
    assert other["/img/coffee.jpg"]["engine"] is None and other["/img/coffee.jpg"]["source"] == "urls"
    assert other["/img/rocket.webp"]["engine"] == "bing"
    assert_store_clean(manifest)


def test_a_query_or_url_taken_out_is_set_aside_and_comes_back_without_a_download(servers, tmp_path, capsys):
    """A query replaced and a URL deleted from a list: their images are set aside (rejected, 'source removed'),
    their links are no longer fetched; put back, the same images return from the store, not downloaded again."""
    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg", "/img/chelsea.png"])
    plant(engine, images, "beta things", ["/img/rocket.webp"])
    plant(engine, images, "delta things", ["/img/rocket.gif"])
    full = f"{images.url}/img/astronaut.bmp\n{images.url}/img/coffee.tiff\n"
    (tmp_path / "g.txt").write_text(full)
    spec = web_dataset(engine)
    spec["classes"]["gamma"] = {"urls": "g.txt"}
    manifest = write_manifest(tmp_path, {"web": spec})

    def state() -> dict[str, tuple]:
        return {route_of(r["origin"], images.url): (r["status"], r["reason"], r["detail"])
                for r in rows(manifest, "SELECT origin, status, reason, detail FROM items")}

    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    before = state()
    assert {k: v[0] for k, v in before.items()} == {"/img/coffee.jpg": "ok", "/img/chelsea.png": "ok",
                                                   "/img/rocket.webp": "ok", "/img/astronaut.bmp": "ok",
                                                   "/img/coffee.tiff": "ok"}
    changed = web_dataset(engine)
    changed["classes"]["beta"] = {"queries": ["delta things"]}
    changed["classes"]["gamma"] = {"urls": "g.txt"}
    (tmp_path / "g.txt").write_text(f"{images.url}/img/astronaut.bmp\n")
    write_manifest(tmp_path, {"web": changed})
    code, out, err = run_cli(capsys, manifest, "build")
    assert code == 0, err
    after = state()
    assert after["/img/rocket.webp"] == ("rejected", "source removed",
                                         "query 'beta things' is no longer a source of class 'beta'")
    assert after["/img/coffee.tiff"] == ("rejected", "source removed", "no longer in a URL list of class 'gamma'")
    assert {k: v[0] for k, v in after.items() if v[1] != "source removed"} == {
        "/img/coffee.jpg": "ok", "/img/chelsea.png": "ok", "/img/astronaut.bmp": "ok", "/img/rocket.gif": "ok"}
    assert "2 images set aside because their source left the manifest" in " ".join(out.split())

    downloads = hits(images)
    (tmp_path / "g.txt").write_text(full)
    write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    again = state()
    assert {k: v for k, v in again.items() if k != "/img/rocket.gif"} == before
    assert again["/img/rocket.gif"] == ("rejected", "source removed",
                                        "query 'delta things' is no longer a source of class 'beta'")
    assert new_hits(downloads, hits(images)) == {}  # back from the store
    # the store keeps the set-aside image's file (and no other file than the images'): nothing is lost
    kept = {r["sha256"] for r in rows(manifest, "SELECT sha256 FROM items WHERE status IN ('ok', 'duplicate') "
                                                "OR reason = 'source removed'")}
    store = load_manifest(manifest).store
    assert {p.name.split(".")[0] for p in store.rglob("*") if p.is_file()} == kept


# --------------------------------------------------------------------------- URL lists


def test_a_renamed_web_class_keeps_its_images_splits_and_reviews_without_a_download(servers, tmp_path, capsys):
    """A class of a query and a URL list renamed after a review: the same URLs (same content) are the same
    pictures — a removed one stays removed, a kept one kept, every split stays, and nothing is downloaded again
    (fresh-user trial 2, item 1, for web sources)."""
    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg", "/img/chelsea.png"])
    plant(engine, images, "beta things", ["/img/rocket.webp"])
    (tmp_path / "g.txt").write_text(f"{images.url}/img/astronaut.bmp\n{images.url}/img/coffee.tiff\n")
    spec = web_dataset(engine)
    spec["classes"]["alpha"] = {"queries": ["alpha things"], "urls": "g.txt"}
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0

    def state() -> dict[str, tuple]:
        return {route_of(r["origin"], images.url): (r["image_id"], r["label"], r["status"], r["reason"], r["split"],
                                                    r["last_review"])
                for r in rows(manifest, "SELECT * FROM images WHERE reason IS DISTINCT FROM 'source removed'")}

    before = state()
    (tmp_path / "d.csv").write_text(f"image_id,action,new_label\n{before['/img/coffee.jpg'][0]},remove,\n"
                                    f"{before['/img/astronaut.bmp'][0]},keep,\n")
    assert run_cli(capsys, manifest, "review", "web", "--decisions", str(tmp_path / "d.csv"))[0] == 0
    downloads = hits(images)
    renamed = web_dataset(engine)
    del renamed["classes"]["alpha"]
    renamed["classes"]["first"] = {"queries": ["alpha things"], "urls": "g.txt"}
    write_manifest(tmp_path, {"web": renamed})
    code, out, err = run_cli(capsys, manifest, "build")
    assert code == 0, err
    after = state()
    assert set(after) == set(before)
    assert {k: v[4] for k, v in after.items()} == {k: v[4] for k, v in before.items()}  # no split moved
    assert after["/img/coffee.jpg"][1:4] == ("first", "rejected", "removed in review")
    assert after["/img/astronaut.bmp"][1:3] + after["/img/astronaut.bmp"][5:] == ("first", "ok", "keep")
    assert after["/img/chelsea.png"][1:3] == ("first", "ok") and after["/img/chelsea.png"][0] != before["/img/chelsea.png"][0]
    assert new_hits(downloads, hits(images)) == {}  # the pictures came from the store
    assert ("4 images under a renamed, merged or split class (class 'alpha' renamed 'first') kept their split and "
            "2 review decisions") in " ".join(out.split())


def test_a_url_list_label_in_another_unicode_form_is_that_class(servers, tmp_path, capsys, monkeypatch):
    """A list written on a Mac names the class café decomposed (e + U+0301): it is that class, as a folder is."""
    import unicodedata

    _, images = servers
    u = images.url
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café"
    (tmp_path / "c.csv").write_text(f"url,label\n{u}/img/coffee.jpg,{nfd}\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text(f"{u}/img/chelsea.png\n", encoding="utf-8")
    manifest = write_manifest(tmp_path, {"lists": {
        "allow_private_hosts": True, "classes": {"café": {"urls": "c.csv"}, "tea": {"urls": "t.txt"}}}})
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, ""), err
    assert "c.csv line 2" not in out, out
    assert [r["label"] for r in rows(manifest, "SELECT label FROM images WHERE origin LIKE '%coffee.jpg'")] == ["café"]


def test_url_lists_report_bad_lines_and_fetch_each_url_once(servers, tmp_path, capsys, monkeypatch):
    _, images = servers
    u = images.url
    (tmp_path / "a.txt").write_text(
        f"# photos of alpha\n{u}/img/coffee.jpg\nftp://example.org/a.jpg\n\nnot a url\n{u}/img/coffee.jpg\n"
        f"{u}/status/404\nhttp://user:pw@127.0.0.1/a.jpg\n{u}/img/chelsea.png\n{u}/unicode/ñandú.jpg\n",
        encoding="utf-8")
    (tmp_path / "b.csv").write_text(
        f"url,label\n{u}/img/rocket.gif,beta\n{u}/img/coffee.jpg,beta\n,beta\n{u}/img/astronaut.bmp,alpha\n"
        f"javascript:alert(1),beta\n\"{u}/img/rocket.webp\",\n{u}/img/never.jpg,BETA\n", encoding="utf-8")
    manifest = write_manifest(tmp_path, {"lists": {
        "allow_private_hosts": True, "classes": {"alpha": {"urls": "a.txt"}, "beta": {"urls": ["b.csv"]}}}})
    monkeypatch.setenv("COLUMNS", "200")

    code, out, err = run_cli(capsys, manifest, "build", "-q")

    assert (code, err) == (0, "")
    for problem in [
        "lists: a.txt line 3: 'ftp://example.org/a.jpg' is not an http(s) URL (scheme 'ftp') — skipped",
        "lists: a.txt line 5: 'not a url' is not an http(s) URL (no scheme) — skipped",
        "lists: a.txt line 6: duplicate of line 2 — skipped",
        "lists: a.txt line 8: 'http://user:pw@127.0.0.1/a.jpg' contains credentials (user:password@) — not stored",
        "lists: b.csv line 4: no url — skipped",
        "lists: b.csv line 6: 'javascript:alert(1)' is not an http(s) URL (scheme 'javascript') — skipped",
        "lists: b.csv line 5: label 'alpha' differs from class 'beta'; using 'beta'",
        # variant hunt 3: a class in another case was blamed on an unquoted comma
        "lists: b.csv line 8: label 'BETA' is not a class of this dataset (did you mean 'beta'? labels must match a "
        "class exactly) — skipped",
    ]:
        assert problem in out, problem
    assert "/img/never.jpg" not in hits(images)
    # the good lines proceed; coffee.jpg is in both lists (and twice in a.txt): fetched once
    served = hits(images)
    assert served["/img/coffee.jpg"] == 1
    assert all(served[p] == 1 for p in ("/img/chelsea.png", "/img/rocket.gif", "/img/astronaut.bmp",
                                         "/img/rocket.webp", "/status/404", "/unicode/ñandú.jpg"))
    imgs = rows(manifest, "SELECT * FROM images WHERE dataset = 'lists'")
    got = {(r["label"], route_of(r["origin"], u)): ("same" if "coffee" in r["origin"] else (r["status"], r["reason"]),
                                                      r["rank"]) for r in imgs}
    assert got == {
        ("alpha", "/img/coffee.jpg"): ("same", 2),
        ("alpha", "/status/404"): (("failed", "http 404"), 7),
        ("alpha", "/img/chelsea.png"): (("ok", None), 9),
        ("alpha", "/unicode/ñandú.jpg"): (("ok", None), 10),
        ("beta", "/img/rocket.gif"): (("ok", None), 2),
        ("beta", "/img/coffee.jpg"): ("same", 3),
        ("beta", "/img/astronaut.bmp"): (("ok", None), 5),
        ("beta", "/img/rocket.webp"): (("ok", None), 7),
    }
    # coffee.jpg under two labels: one image stored once, flagged as a label conflict
    coffee = sorted((r["status"], r["conflict"], r["path"]) for r in imgs if r["origin"].endswith("coffee.jpg"))
    assert [c[:2] for c in coffee] == [("duplicate", True), ("ok", True)] and coffee[0][2] == coffee[1][2]
    assert all(r["source"] == "urls" and r["engine"] is None and r["query"].endswith(("a.txt", "b.csv"))
               for r in imgs)
    log = rows(manifest, "SELECT url, engine, label FROM fetch_log WHERE dataset = 'lists'")
    assert len(log) == len({r["url"] for r in log}) == 7  # one fetch per URL per dataset
    assert all(r["engine"] == "urls" for r in log)
    assert_store_clean(manifest)


# --------------------------------------------------------------------------- no network


def test_unreachable_bing_says_so_in_one_line_and_fails_fast(tmp_path, capsys):
    try:
        socket.getaddrinfo("www.bing.com", 443)
    except OSError:
        pass
    else:
        pytest.skip("this machine resolves www.bing.com: the no-network path cannot be exercised offline")
    manifest = write_manifest(tmp_path, {"web": {"engine": "bing", "classes": {"cats": "cats", "dogs": "dogs"}}})

    t0 = time.monotonic()
    code, out, err = run_cli(capsys, manifest, "build", "-q")

    assert time.monotonic() - t0 < 10
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [
        "Error: cannot reach www.bing.com (no network?) — check your connection or set `endpoint`"]
    assert rows(manifest, "SELECT count(*) AS n FROM images") == [{"n": 0}]
    assert rows(manifest, "SELECT outcome FROM builds") == [{"outcome": "failed"}]


def test_unreachable_endpoint_names_the_endpoint(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    endpoint = f"http://127.0.0.1:{port}"
    manifest = write_manifest(tmp_path, {"web": {"engine": "icrawler:bing", "endpoint": endpoint,
                                                 "allow_private_hosts": True, "classes": {"cats": "cats", "dogs": "dogs"}}})
    t0 = time.monotonic()
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert time.monotonic() - t0 < 10
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [
        f"Error: cannot reach 127.0.0.1:{port} (connection refused) — check that the endpoint {endpoint} is running "
        "or fix `endpoint` in the manifest"]


def test_unreachable_engine_does_not_stop_url_lists(servers, tmp_path, capsys, monkeypatch):
    _, images = servers
    (tmp_path / "dogs.txt").write_text(f"{images.url}/img/coffee.jpg\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = write_manifest(tmp_path, {"web": {"endpoint": f"http://127.0.0.1:{port}", "allow_private_hosts": True,
                                                 "classes": {"cats": "cats", "dogs": {"urls": "dogs.txt"}}}})
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    assert f"web: cannot reach 127.0.0.1:{port} (connection refused)" in out
    assert catalog_counts(manifest, "web") == {"ok": 1}


# --------------------------------------------------------------------------- summary and progress


def test_build_summary_and_progress_match_the_catalog(servers, tmp_path, capsys, monkeypatch):
    engine, images = servers
    plant(engine, images, "alpha things", ALPHA)
    plant(engine, images, "beta things", BETA)
    manifest = write_manifest(tmp_path, {"web": web_dataset(engine)})
    progress = RecordingProgress()

    summary = build(load_manifest(manifest), ["web"], progress=progress)

    [ds] = summary.datasets
    counts = catalog_counts(manifest, "web")
    assert counts == {"ok": 7, "duplicate": 3, "rejected": 7, "failed": 8}
    assert (ds.ok, ds.duplicates, ds.rejected, ds.failed) == (
        counts["ok"], counts["duplicate"], counts["rejected"], counts["failed"])
    assert ds.sources == ds.new == sum(counts.values()) == len(ALPHA) + len(BETA) and ds.skipped == 0
    reasons = rows(manifest, """SELECT reason, count(*) AS n FROM images
                                WHERE status IN ('rejected', 'failed') GROUP BY ALL""")
    assert ds.rejects == {r["reason"]: r["n"] for r in reasons}
    assert sum(ds.splits.values()) == counts["ok"]
    # the progress bars: one search step per query, one fetch step per URL
    assert progress.stages["web: search (bing)"] == {"total": 2, "done": 2, "counts": {"links": len(BETA)}}
    fetch = progress.stages["web: fetch + verify"]
    assert fetch["total"] == fetch["done"] == len(ALPHA) + len(BETA)
    # while fetching, duplicates are not known yet: they count as ok there
    assert fetch["counts"] == {"ok": counts["ok"] + counts["duplicate"], "failed": counts["failed"],
                               "rejected": counts["rejected"]}

    # a re-run processes nothing: it says the dataset is up to date, with its split totals and duplicates
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    splits = ", ".join(f"{s} {ds.splits[s]}" for s in ("train", "valid", "test") if ds.splits.get(s))
    assert (f"web: up to date — {counts['ok']} accepted images ({splits}), 3 duplicates; nothing new in "
            f"{len(ALPHA) + len(BETA)} sources ({counts['failed']} of them failed to download — "
            "`dsbuild build --retry-failed` fetches them again)") in out.splitlines()
    assert "processed" not in out


def test_many_links_are_verified_in_worker_processes(tmp_path, capsys):
    """≥ 48 downloads: bodies are verified in a spawned process pool while downloads go on."""
    from dsbuild.executor import INLINE_LIMIT

    with FakeEngineServer(total=30) as engine:  # its /img/ JPEGs: 4 distinct photos, so many exact duplicates
        spec = web_dataset(engine)
        spec["per_query"] = 30
        manifest = write_manifest(tmp_path, {"web": spec})
        assert 2 * 30 >= INLINE_LIMIT
        code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "2")
        assert (code, err) == (0, "")
        assert engine.hits("/img/") == 60
    assert catalog_counts(manifest, "web") == {"ok": 4, "duplicate": 56}
    assert len(assert_store_clean(manifest)) == 4
    assert rows(manifest, "SELECT count(*) AS n FROM fetch_log WHERE outcome = 'ok' AND sha256 IS NOT NULL") == [{"n": 60}]


def test_downloads_wait_for_verification_when_bodies_pile_up(tmp_path, capsys, monkeypatch):
    """Back-pressure: with a 1-byte memory backlog every download waits until the bodies before it are
    verified; the build still completes, with the same catalog as an unhindered one."""
    import dsbuild.sources.web as crawl

    monkeypatch.setattr(crawl, "MEMORY_BACKLOG", 1)
    answers: list[bool] = []
    backlogged = crawl.BodyVerifier.backlogged

    def counting(self) -> bool:
        answers.append(backlogged(self))
        return answers[-1]

    monkeypatch.setattr(crawl.BodyVerifier, "backlogged", counting)
    with FakeEngineServer(total=30) as engine:
        spec = web_dataset(engine)
        spec["per_query"] = 30
        manifest = write_manifest(tmp_path, {"web": spec})
        code, out, err = run_cli(capsys, manifest, "build", "-q", "--workers", "2")
        assert (code, err) == (0, "")
        assert engine.hits("/img/") == 60
    assert any(answers), "downloads never waited"
    assert catalog_counts(manifest, "web") == {"ok": 4, "duplicate": 56}
    assert len(assert_store_clean(manifest)) == 4
    assert not list((load_manifest(manifest).store / ".incoming").iterdir())


def test_a_killed_build_leaves_nothing_behind_after_the_next_build(servers, tmp_path):
    """SIGKILL while bodies are half downloaded: a small one is only in memory, a big one (past the
    in-memory limit) is a partial file; the next build removes that file and finishes the job."""
    import os
    import signal
    import subprocess
    import sys

    from dsbuild.sources.web import IN_MEMORY_BODY

    engine, images = servers
    plant(engine, images, "alpha things", ["/img/coffee.jpg", "/stall-body.jpg", "/stall-body-big.jpg"])
    plant(engine, images, "beta things", ["/img/chelsea.png"])
    slow = dict(FAST_FETCH, read_timeout=60.0, deadline=120.0, max_bytes=20_000_000)
    spec = dict(web_dataset(engine), fetch=slow)
    manifest = write_manifest(tmp_path, {"web": spec})
    incoming = load_manifest(manifest).store / ".incoming"

    log = tmp_path / "killed.log"
    before = hits(images)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(manifest), "build", "-q"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        # Both stalled bodies are being received: the big one spilled to a .part file past IN_MEMORY_BODY.
        while not (incoming.is_dir() and any(p.stat().st_size > IN_MEMORY_BODY for p in incoming.glob("dl-*.part"))
                   and "/stall-body.jpg" in new_hits(before, hits(images))):
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"the build never started the downloads:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [p.suffix for p in incoming.iterdir()] == [".part"]  # the small stalled body was only in memory

    write_manifest(tmp_path, {"web": web_dataset(engine)})  # short timeouts again
    before = hits(images)
    summary = build(load_manifest(manifest), ["web"])
    assert not [p for p in incoming.iterdir()], "temp files of the killed build are still there"
    assert_store_clean(manifest)
    # the links were saved before anything was downloaded: the next build did not search again and
    # fetched what the killed one had not catalogued
    assert set(engine_queries(engine)) == {"alpha things", "beta things"}
    assert {"/stall-body.jpg", "/stall-body-big.jpg"} <= set(new_hits(before, hits(images)))
    assert catalog_counts(manifest, "web") == {"ok": 2, "failed": 1, "rejected": 1}  # the big one: too large now
    assert summary.datasets[0].failed == 1


def test_bodies_held_in_memory_are_bounded_at_any_concurrency() -> None:
    """Bodies in flight are held in memory up to a limit that shrinks with concurrency (bounded RAM), never below 256 kB."""
    from dsbuild.sources.web import IN_FLIGHT_MEMORY, IN_MEMORY_BODY, in_memory_limit

    assert in_memory_limit(32) == IN_MEMORY_BODY == 4_000_000
    assert in_memory_limit(128) == 2_000_000
    assert in_memory_limit(100_000) == 256_000
    for concurrency in (1, 8, 32, 64, 128, 256, 1000):
        assert in_memory_limit(concurrency) * concurrency <= max(IN_FLIGHT_MEMORY, 256_000 * concurrency)


def test_a_worker_killed_mid_batch_costs_nothing(tmp_path: Path) -> None:
    """A verify worker that dies (here: SIGKILL, as a decoder crash or the OOM killer would) breaks the pool;
    the batches it held are re-verified file by file and a fresh pool takes over: every body gets its record."""
    import os
    import queue
    import signal
    from types import SimpleNamespace

    from PIL import Image
    from skimage import data as skdata

    from dsbuild.sources.web import VERIFY_CHUNK, BodyVerifier
    from dsbuild.manifest import load_manifest

    (tmp_path / "datasets.toml").write_text('[datasets.d.classes]\na = "x"\nb = "y"\n')
    ds = load_manifest(tmp_path / "datasets.toml").dataset("d")
    photo = Image.fromarray(skdata.astronaut())
    bodies = []
    for k in range(6 * VERIFY_CHUNK):
        path = tmp_path / f"dl-{k}.png"
        photo.rotate(k).save(path)  # PNGs decode slowly enough for the kill to land mid-batch
        if k % 2:  # a body that spilled to a file
            bodies.append(SimpleNamespace(url=f"http://example.org/{k}.png", path=path, data=None))
        else:  # a body held in memory: the worker stores it when it is accepted
            bodies.append(SimpleNamespace(url=f"http://example.org/{k}.png", path=None, data=path.read_bytes()))
    done: queue.Queue = queue.Queue()
    verifier = BodyVerifier(ds, done, workers=2, use_pool=True, store=tmp_path / "store")
    try:
        for res in bodies:
            verifier.add(res)
        verifier.flush()
        first_pool = verifier.pool
        victim = next(iter(first_pool._processes))
        os.kill(victim, signal.SIGKILL)
        records = {}
        while len(records) < len(bodies):
            kind, (batch, fut) = done.get(timeout=120)
            for res, rec in zip(batch, verifier.records(batch, fut)):
                records[res.url] = rec
        assert not verifier.busy()
        assert verifier.pool is not first_pool  # the broken pool was replaced
        assert all(rec.ok and rec.width == 512 for rec in records.values())
        for res in bodies:  # in-memory bodies were stored by the workers, byte for byte; spilled ones are the caller's
            rec = records[res.url]
            assert (rec.store_path is None) == (res.data is None)
            if res.data is not None:
                assert Path(rec.store_path).read_bytes() == res.data
        assert not verifier.held_bytes
        assert len({rec.sha256 for rec in records.values()}) == len(bodies)
        # The pool was replaced: new batches still verify in worker processes.
        verifier.add(SimpleNamespace(url="http://example.org/late.png", path=bodies[1].path, data=None))
        verifier.flush()
        kind, (batch, fut) = done.get(timeout=60)
        assert fut is not None and verifier.records(batch, fut)[0].ok
    finally:
        verifier.shutdown()


# --------------------------------------------------------------------------- a URL fetched before: today's settings decide


def _png(index: int, side: int) -> bytes:
    """A real photo (skimage) as a ``side``×``side`` PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(real_jpeg(index, (side, side)))).save(buf, format="PNG")
    return buf.getvalue()


def _url_lists(folder: Path, lists: dict[str, list[str]]) -> dict[str, dict]:
    """Write ``urls/<label>.txt`` for each label; return the classes table of a manifest reading them."""
    (folder / "urls").mkdir(exist_ok=True)
    for label, urls in lists.items():
        (folder / "urls" / f"{label}.txt").write_text("".join(u + "\n" for u in urls), encoding="utf-8")
    return {label: {"urls": f"urls/{label}.txt"} for label in lists}


def _outcomes(manifest: Path, dataset: str) -> dict[tuple[str, str], tuple]:
    """(label, file name of the origin) → (status, reason, detail) of every image of ``dataset``."""
    return {(r["label"], r["origin"].rsplit("/", 1)[-1]): (r["status"], r["reason"], r["detail"]) for r in rows(
        manifest, "SELECT label, origin, status, reason, detail FROM images WHERE dataset = ?", [dataset])}


def test_a_url_another_dataset_fetched_is_verified_under_this_datasets_limits(fake_engine, tmp_path, capsys):
    """'strict' built after 'loose' on the same URLs gets the outcomes it gets when built alone: the stored copy is
    verified under strict's min_side and format allow-list, not catalogued from loose's record."""
    small = fake_engine.serve("small.png", _png(0, 80))
    big = fake_engine.serve("big.png", _png(1, 96))
    small_jpeg = fake_engine.serve("small.jpg", real_jpeg(2, (80, 80)))
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(3, (96 + i, 96))) for i in range(3)]
    classes = _url_lists(tmp_path, {"cat": [small, big, small_jpeg], "dog": dogs})
    loose = {"allow_private_hosts": True, "classes": classes}
    strict = dict(loose, verify={"min_side": 90, "formats": ["JPEG"]})
    manifest = write_manifest(tmp_path, {"loose": loose, "strict": strict})

    assert run_cli(capsys, manifest, "build", "-q", "loose")[0] == 0
    assert {k: v[0] for k, v in _outcomes(manifest, "loose").items() if k[0] == "cat"} == {
        ("cat", "small.png"): "ok", ("cat", "big.png"): "ok", ("cat", "small.jpg"): "ok"}
    downloads = fake_engine.hits("/photo/")
    code, out, err = run_cli(capsys, manifest, "build", "-q", "strict")
    assert (code, err) == (0, "")
    assert fake_engine.hits("/photo/") == downloads  # not downloaded again: verified from the store
    expected = {
        ("cat", "small.png"): ("rejected", "unsupported format", "PNG is not in the allowed formats (JPEG)"),
        ("cat", "big.png"): ("rejected", "unsupported format", "PNG is not in the allowed formats (JPEG)"),
        ("cat", "small.jpg"): ("rejected", "too small", "80×80 is below min_side 90"),
    }
    got = _outcomes(manifest, "strict")
    assert {k: got[k] for k in expected} == expected
    assert {got[k][0] for k in got if k[0] == "dog"} == {"ok"}

    alone = tmp_path / "alone"
    alone.mkdir()
    _url_lists(alone, {"cat": [small, big, small_jpeg], "dog": dogs})
    fresh = write_manifest(alone, {"strict": strict})
    assert run_cli(capsys, fresh, "build", "-q")[0] == 0
    assert _outcomes(fresh, "strict") == got


def test_a_url_rejected_under_todays_limits_stays_rejected_under_another_class(fake_engine, tmp_path, capsys):
    """After min_side rose and rejected an image, listing its URL under a second class or renaming its class
    does not bring it back accepted from the record of the build that fetched it under the old limit."""
    small = fake_engine.serve("small.jpg", real_jpeg(0, (80, 80)))
    cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)]
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
    spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats + [small], "dog": dogs})}
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    assert _outcomes(manifest, "web")[("cat", "small.jpg")][0] == "ok"

    spec["verify"] = {"min_side": 90}
    write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    too_small = ("rejected", "too small", "80×80 is below min_side 90")
    assert _outcomes(manifest, "web")[("cat", "small.jpg")] == too_small

    # the same URL under dog too, and cat renamed kitty
    spec["classes"] = _url_lists(tmp_path, {"kitty": cats + [small], "dog": dogs + [small]})
    write_manifest(tmp_path, {"web": spec})
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    got = _outcomes(manifest, "web")
    assert (got[("dog", "small.jpg")], got[("kitty", "small.jpg")]) == (too_small, too_small)


def test_a_url_rejected_as_truncated_can_be_listed_again(fake_engine, tmp_path, capsys):
    """A truncated JPEG is rejected without a stored blob; its line taken out and put back: the URL is downloaded
    and rejected again, and later builds run (they raised a TypeError in Catalog.blob_record)."""
    whole = real_jpeg(0, (96, 96))
    trunc = fake_engine.serve("trunc.jpg", whole[: len(whole) // 2])
    cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)]
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
    spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats + [trunc], "dog": dogs})}
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    status, reason, _ = _outcomes(manifest, "web")[("cat", "trunc.jpg")]
    assert (status, reason) == ("rejected", "truncated")

    _url_lists(tmp_path, {"cat": cats})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    assert _outcomes(manifest, "web")[("cat", "trunc.jpg")][:2] == ("rejected", "source removed")

    _url_lists(tmp_path, {"cat": cats + [trunc]})
    before = fake_engine.hits("/photo/trunc.jpg")
    for _ in range(2):
        code, out, err = run_cli(capsys, manifest, "build", "-q")
        assert (code, err) == (0, "")
        assert _outcomes(manifest, "web")[("cat", "trunc.jpg")][:2] == ("rejected", "truncated")
    assert fake_engine.hits("/photo/trunc.jpg") == before + 1  # downloaded again once: no blob to verify


def test_retry_failed_fetches_a_404_again_and_the_up_to_date_line_counts_failures(fake_engine, tmp_path, capsys):
    cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)]
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
    late = f"{fake_engine.url}/photo/late.jpg"  # 404 until served
    spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats + [late], "dog": dogs})}
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    assert _outcomes(manifest, "web")[("cat", "late.jpg")] == ("failed", "http 404", "http 404")

    fake_engine.serve("late.jpg", real_jpeg(3, (96, 96)))
    code, out, err = run_cli(capsys, manifest, "build")  # not -q: the up-to-date line is the summary's
    assert code == 0, err
    assert ("web: up to date — 6 accepted images (train 4, valid 2); nothing new in 7 sources (1 of them failed to "
            "download — `dsbuild build --retry-failed` fetches it again)") in " ".join(out.split())
    assert fake_engine.hits("/photo/late.jpg") == 1

    code, out, err = run_cli(capsys, manifest, "build", "-q", "--retry-failed")
    assert (code, err) == (0, "")
    assert fake_engine.hits("/photo/late.jpg") == 2
    assert _outcomes(manifest, "web")[("cat", "late.jpg")] == ("ok", None, None)


def test_retry_failed_searches_a_query_that_found_no_results_again(fake_engine, tmp_path, capsys):
    fake_engine.plant("cute cat", [])  # the engine has nothing for it (today)
    fake_engine.plant("cute dog", [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)])
    spec = {"engine": "bing", "endpoint": fake_engine.url, "per_query": 20, "allow_private_hosts": True,
            "classes": {"cat": "cute cat", "dog": "cute dog"}}
    manifest = write_manifest(tmp_path, {"web": spec})
    note = ("web: class 'cat' has no images: the search for 'cute cat' found no results — `dsbuild build "
            "--retry-failed` searches it again (else change the query, add images or remove the class)")
    code, out, err = run_cli(capsys, manifest, "build")
    assert code == 0 and note in " ".join(out.split())

    fake_engine.plant("cute cat", [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)])
    searches = engine_queries(fake_engine)
    code, out, err = run_cli(capsys, manifest, "build")
    assert code == 0 and note in " ".join(out.split())
    assert engine_queries(fake_engine) == searches  # a plain build does not search again

    code, out, err = run_cli(capsys, manifest, "build", "--retry-failed")
    assert code == 0, err
    assert "class 'cat'" not in out
    assert set(engine_queries(fake_engine)[len(searches):]) == {"cute cat"}  # its pages only
    assert {k: v[0] for k, v in _outcomes(manifest, "web").items() if k[0] == "cat"} == {
        ("cat", f"cat{i}.jpg"): "ok" for i in range(3)}


# --------------------------------------------------------------------------- a stored download under today's policy


def _stored_files(manifest: Path) -> set[str]:
    store = load_manifest(manifest).catalog.parent / "store"
    return {p.name for p in store.rglob("*") if p.is_file() and ".incoming" not in p.parts}


@pytest.mark.timeout(240)  # three or four builds
def test_a_stored_download_obeys_the_download_policy_tightened_since(fake_engine, tmp_path, capsys):
    """Images downloaded from a loopback host while allow_private_hosts was set, and one larger than the fetch
    max_bytes set later, stayed 'ok' from their stored copies: now each is refused as a download would be today
    ('private address', 'too large', the detail saying what to change), nothing is downloaded and nothing leaves
    the store; relaxing the setting again brings them back from the store."""
    big = fake_engine.serve("big.jpg", real_jpeg(0, (320, 320)))
    cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)]
    by_name = [fake_engine.serve("named.jpg", real_jpeg(3, (100, 96))).replace("127.0.0.1", "localhost")]
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
    size = len(real_jpeg(0, (320, 320)))
    spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats + [big] + by_name, "dog": dogs})}
    manifest = write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    assert {v[0] for v in _outcomes(manifest, "web").values()} == {"ok"}
    downloads, files = fake_engine.hits("/photo/"), _stored_files(manifest)

    spec["fetch"] = dict(FAST_FETCH, max_bytes=size - 1)  # smaller than big.jpg, larger than the others
    write_manifest(tmp_path, {"web": spec})
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    kept = "the copy an earlier build downloaded stays in the store, unused"
    got = _outcomes(manifest, "web")
    assert got[("cat", "big.jpg")] == ("rejected", "too large", f"the download is {size} bytes, more than max_bytes "
                                       f"{size - 1} of [datasets.web.fetch]: {kept} — raise max_bytes to use it")
    assert {v[0] for k, v in got.items() if k != ("cat", "big.jpg")} == {"ok"}

    spec["allow_private_hosts"] = False
    write_manifest(tmp_path, {"web": spec})
    code, out, err = run_cli(capsys, manifest, "build", "-q")
    assert (code, err) == (0, "")
    hint = ("set allow_private_hosts = true in [datasets.web] to fetch from your own network, or add its network to "
            "allowed_networks in [datasets.web.fetch]")
    got = _outcomes(manifest, "web")
    for key, outcome in got.items():
        if key == ("cat", "big.jpg"):
            assert outcome[:2] == ("rejected", "too large")
        elif key == ("cat", "named.jpg"):
            assert outcome[:2] == ("rejected", "private address"), outcome
            assert outcome[2].startswith("localhost resolves to "), outcome
            assert outcome[2].endswith(f", a private or loopback address, which this dataset's settings do not "
                                       f"allow: {kept} — {hint}"), outcome
        else:
            assert outcome == ("rejected", "private address", f"127.0.0.1 is a private or loopback address, which this "
                               f"dataset's settings do not allow: {kept} — {hint}"), (key, outcome)
    assert (fake_engine.hits("/photo/"), _stored_files(manifest)) == (downloads, files)  # nothing fetched or deleted

    spec["allow_private_hosts"], spec["fetch"] = True, FAST_FETCH
    write_manifest(tmp_path, {"web": spec})
    assert run_cli(capsys, manifest, "build", "-q")[0] == 0
    assert {v[0] for v in _outcomes(manifest, "web").values()} == {"ok"}
    assert fake_engine.hits("/photo/") == downloads  # back from the store


@pytest.mark.timeout(240)  # three or four builds
def test_a_download_another_dataset_stored_obeys_this_datasets_policy(fake_engine, tmp_path, capsys):
    """'strict' (no private hosts, a smaller max_bytes) built after 'loose' on the same loopback URLs was given
    loose's stored downloads as they were: now refused as strict's own downloads are, with nothing fetched; a
    network strict allows (allowed_networks) takes them from the store."""
    big = fake_engine.serve("big.jpg", real_jpeg(0, (320, 320)))
    size = len(real_jpeg(0, (320, 320)))
    cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)]
    dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
    classes = _url_lists(tmp_path, {"cat": cats + [big], "dog": dogs})
    loose = {"allow_private_hosts": True, "classes": classes}
    strict = {"classes": classes, "fetch": dict(FAST_FETCH, max_bytes=size - 1)}
    manifest = write_manifest(tmp_path, {"loose": loose, "strict": strict})
    assert run_cli(capsys, manifest, "build", "-q", "loose")[0] == 0
    downloads = fake_engine.hits("/photo/")

    assert run_cli(capsys, manifest, "build", "-q", "strict")[0] == 0
    got = _outcomes(manifest, "strict")
    assert {v[:2] for v in got.values()} == {("rejected", "private address")}
    assert got[("dog", "dog0.jpg")][2].startswith("127.0.0.1 is a private or loopback address, which this dataset's "
                                                  "settings do not allow: the copy an earlier build downloaded stays "
                                                  "in the store, unused — set allow_private_hosts = true in "
                                                  "[datasets.strict]")
    assert fake_engine.hits("/photo/") == downloads

    strict["fetch"] = dict(strict["fetch"], allowed_networks=["127.0.0.1/32"])
    write_manifest(tmp_path, {"loose": loose, "strict": strict})
    assert run_cli(capsys, manifest, "build", "-q", "strict")[0] == 0
    got = _outcomes(manifest, "strict")
    assert got.pop(("cat", "big.jpg"))[:2] == ("rejected", "too large")
    assert {v[0] for v in got.values()} == {"ok"}
    assert fake_engine.hits("/photo/") == downloads
    assert {v[0] for v in _outcomes(manifest, "loose").values()} == {"ok"}


@pytest.mark.timeout(240)  # three or four builds
def test_a_stored_download_marked_noai_is_refused_once_respect_noai_is_on(fake_engine, tmp_path, capsys):
    """A download whose response said X-Robots-Tag: noai, fetched while respect_noai was off, stayed 'ok' from its
    stored copy after respect_noai was turned on (the mark was not recorded): now the mark is recorded with every
    download and the image is refused as 'noai', nothing fetched or deleted; turning it off takes the copy back."""
    with HostileServer() as images:
        marked = f"{images.url}/noai.jpg"
        cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)] + [marked]
        dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
        spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats, "dog": dogs}),
                "fetch": dict(FAST_FETCH, respect_noai=False)}
        manifest = write_manifest(tmp_path, {"web": spec})
        assert run_cli(capsys, manifest, "build", "-q")[0] == 0
        assert _outcomes(manifest, "web")[("cat", "noai.jpg")][0] == "ok"
        assert rows(manifest, "SELECT noai FROM fetches WHERE url = ?", [marked]) == [{"noai": True}]
        hits, files = images.hits("/noai.jpg"), _stored_files(manifest)

        spec["fetch"] = dict(FAST_FETCH, respect_noai=True)
        write_manifest(tmp_path, {"web": spec})
        code, out, err = run_cli(capsys, manifest, "build", "-q")
        assert (code, err) == (0, "")
        got = _outcomes(manifest, "web")
        assert got.pop(("cat", "noai.jpg")) == (
            "rejected", "noai", "the server marked this image X-Robots-Tag: noai (or noimageai) when an earlier build "
            "downloaded it: the copy an earlier build downloaded stays in the store, unused — set respect_noai = false "
            "in [datasets.web.fetch] to use it")
        assert {v[0] for v in got.values()} == {"ok"}  # the unmarked ones are kept
        assert (images.hits("/noai.jpg"), _stored_files(manifest)) == (hits, files)

        spec["fetch"] = dict(FAST_FETCH, respect_noai=False)
        write_manifest(tmp_path, {"web": spec})
        assert run_cli(capsys, manifest, "build", "-q")[0] == 0
        assert _outcomes(manifest, "web")[("cat", "noai.jpg")][0] == "ok"
        assert images.hits("/noai.jpg") == hits


@pytest.mark.timeout(240)  # three builds
def test_a_stored_download_is_held_to_a_lower_max_redirects(fake_engine, tmp_path, capsys):
    """An image reached through a redirect stayed 'ok' from its stored copy after max_redirects was set below the
    redirects it took: now 'too many redirects' (the hops are recorded with each download), nothing fetched or
    deleted; raising max_redirects again takes the copy back without a request."""
    with HostileServer() as images:
        moved = f"{images.url}/redirect/to?url={fake_engine.serve('moved.jpg', real_jpeg(4, (100, 96)))}"
        cats = [fake_engine.serve(f"cat{i}.jpg", real_jpeg(1, (96 + i, 96))) for i in range(3)] + [moved]
        dogs = [fake_engine.serve(f"dog{i}.jpg", real_jpeg(2, (96 + i, 96))) for i in range(3)]
        spec = {"allow_private_hosts": True, "classes": _url_lists(tmp_path, {"cat": cats, "dog": dogs})}
        manifest = write_manifest(tmp_path, {"web": spec})
        assert run_cli(capsys, manifest, "build", "-q")[0] == 0
        assert _outcomes(manifest, "web")[("cat", "moved.jpg")][0] == "ok"
        hits, files = (images.hits("/redirect/to"), fake_engine.hits("/photo/")), _stored_files(manifest)

        spec["fetch"] = dict(FAST_FETCH, max_redirects=0)
        write_manifest(tmp_path, {"web": spec})
        code, out, err = run_cli(capsys, manifest, "build", "-q")
        assert (code, err) == (0, "")
        got = _outcomes(manifest, "web")
        assert got.pop(("cat", "moved.jpg")) == (
            "rejected", "too many redirects", "the download took 1 redirect, more than max_redirects 0 of "
            "[datasets.web.fetch]: the copy an earlier build downloaded stays in the store, unused — raise "
            "max_redirects to use it")
        assert {v[0] for v in got.values()} == {"ok"}
        assert ((images.hits("/redirect/to"), fake_engine.hits("/photo/")), _stored_files(manifest)) == (hits, files)

        spec["fetch"] = FAST_FETCH
        write_manifest(tmp_path, {"web": spec})
        assert run_cli(capsys, manifest, "build", "-q")[0] == 0
        assert _outcomes(manifest, "web")[("cat", "moved.jpg")][0] == "ok"
        assert (images.hits("/redirect/to"), fake_engine.hits("/photo/")) == hits
