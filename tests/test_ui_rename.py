"""The review app's queue after a class is renamed (its folder moved) or removed since the mislabel run.

Trial 4: after `mv photos/dog photos/hound` and a build, the queue still showed the run's flags on the old,
set-aside items (every key refused), not on the same pictures under `hound`; suggestions named the gone class
`dog` (Enter refused); nothing said to run `dsbuild mislabels` again.

Real parts only: real digits built into a real catalog with a real mislabel run (:mod:`ui_data`), a real
`dsbuild ui` process serving over loopback (:class:`ui_browser.UiServer`: uvicorn), httpx as the browser's
requests (the cookie from the printed URL, the CSRF header the page sends), `dsbuild build` (in the test's
process) while the app runs in its own, as a user does.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest

from helpers import sql
from ui_browser import UiServer
from ui_data import record_mislabel_run, write_digit_folders

from dsbuild.cli import main
from dsbuild.ui.security import csrf_for

pytestmark = pytest.mark.slow  # a real server process and three builds


MANIFEST = """catalog = "catalog/dsbuild.duckdb"
[datasets.digits]
imagefolder = "data"
[datasets.digits.verify]
min_side = 16
[datasets.digits.dedup]
threshold = 2
[datasets.digits.split]
train = 0.75
valid = 0.25
seed = 1
"""


def make_imagefolder(root: Path) -> Path:
    """:func:`ui_data.make_project`'s digits (planted wrong labels included) as an ``imagefolder`` dataset, whose
    classes are its folders; built, with a mislabel run of the real cleanlab finder. The manifest path."""
    write_digit_folders(root)
    manifest = root / "datasets.toml"
    manifest.write_text(MANIFEST)
    build(manifest)
    record_mislabel_run(manifest)
    return manifest


def build(manifest: Path) -> None:
    """`dsbuild build` in this process (the app is another: it gives the catalog up when the build asks)."""
    assert main(["-m", str(manifest), "build", "digits", "-q", "--workers", "1"]) == 0


def cards(page: str) -> dict[str, dict[str, str]]:
    """image_id → the card's data-* attributes (label, suggested, why, kind, status), as the page's script reads them."""
    out = {}
    for attrs in re.findall(r'<article class="card[^"]*"(.*?)>', page, re.S):
        data = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', attrs)}
        out[data["id"]] = data
    return out


def note(page: str) -> str | None:
    found = re.search(r'<p class="warning" id="run-note">(.*?)</p>', page, re.S)
    return html.unescape(found.group(1)) if found else None


def successor(manifest: Path, image_id: str) -> str:
    """The item of today with the picture of the set-aside item ``image_id``."""
    return sql(manifest, "SELECT n.image_id FROM items n JOIN items o ON o.sha256 = n.sha256 AND o.image_id = ? "
                         "WHERE n.reason IS DISTINCT FROM 'source removed'", [image_id])[0][0]


def test_the_queue_follows_a_renamed_class_and_says_why_a_removed_one_cannot_be_accepted(tmp_path: Path) -> None:
    manifest = make_imagefolder(tmp_path / "p")
    (run_id,) = sql(manifest, "SELECT run_id FROM runs WHERE kind = 'mislabels'")[0]
    flags = sql(manifest, "SELECT image_id, given_label, suggested_label FROM issue_rows WHERE run_id = ? AND is_issue "
                          "AND kind = 'label'", [run_id])
    of_seven = [i for i, given, _ in flags if given == "seven"]
    to_seven = [i for i, given, s in flags if s == "seven" and given != "seven"]
    assert of_seven and to_seven, flags  # the scenario: flags of the class that is renamed, and suggestions of it
    server = UiServer(manifest)
    try:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            token = re.search(r"token=([^&\s]+)", server.url).group(1)
            headers = {"X-CSRF-Token": csrf_for(token)}
            assert client.get(server.url).status_code == 200
            before = cards(client.get(server.base + "/?n=500").text)
            assert set(of_seven) <= set(before) and note(client.get(server.base + "/").text) is None

            # The class folder is renamed (`mv data/seven data/sept`): new items, the old ones set aside.
            (manifest.parent / "data" / "seven").rename(manifest.parent / "data" / "sept")
            build(manifest)
            page = client.get(server.base + "/?n=500").text
            now = cards(page)
            moved = {i: successor(manifest, i) for i in of_seven}
            assert not set(of_seven) & set(now)  # set-aside rows are no cards
            assert {c["status"] for c in now.values()} <= {"ok", "duplicate"}
            for old, new in moved.items():
                assert now[new]["label"] == "sept" and now[new]["kind"] == "label", now.get(new)
            for image_id in to_seven:
                assert now[image_id]["suggested"] == "sept" and "why" not in now[image_id]
            assert sum(c["kind"] == "label" for c in now.values()) == len(flags)
            assert note(page) == (
                f"Warning: the latest mislabel run of 'digits' ({run_id}) scored the classes one, seven, zero; the "
                "dataset's classes are one, sept, zero now (gone: seven; new: sept) — its suggestions of 'seven' name "
                "'sept' now (class 'seven' renamed 'sept'): run `dsbuild mislabels digits` again to score the current "
                "classes")
            # Enter on a card suggesting the renamed class, and a key on a moved picture's card: both apply.
            accept = client.post(server.base + "/api/decide", headers=headers, json={"decisions": [
                {"image_id": to_seven[0], "action": "relabel", "new_label": now[to_seven[0]]["suggested"]}]})
            assert accept.status_code == 200 and accept.json()["states"][0]["label"] == "sept", accept.text
            new = moved[of_seven[0]]
            keep = client.post(server.base + "/api/decide", headers=headers,
                               json={"decisions": [{"image_id": new, "action": "keep"}]})
            assert keep.status_code == 200 and keep.json()["states"][0]["state"] == "kept as sept", keep.text

            # The class is removed: its suggestions cannot be taken, and the card says why (no Enter on it).
            (manifest.parent / "data" / "sept").rename(tmp_path / "sept")
            build(manifest)
            page = client.get(server.base + "/?n=500").text
            now = cards(page)
            assert not set(moved.values()) & set(now)
            waiting = [i for i in to_seven[1:] if i in now]
            assert waiting, now
            for image_id in waiting:
                assert now[image_id]["suggested"] == ""
                assert now[image_id]["why"] == ("'seven' is no longer a class (class 'seven' removed): pick a class "
                                                "with its key")
            assert note(page) == (
                f"Warning: the latest mislabel run of 'digits' ({run_id}) scored the classes one, seven, zero; the "
                "dataset's classes are one, zero now (gone: seven) — its suggestions of 'seven' (class 'seven' "
                "removed) cannot be accepted: run `dsbuild mislabels digits` again to score the current classes")
    finally:
        server.stop()


def test_a_class_renamed_twice_since_the_run_keeps_every_flag_on_its_picture(tmp_path: Path) -> None:
    """`seven` → `sept` → `siete` (two folder renames, a build after each): every flag of the run on a `seven`
    picture reads on its item under `siete`, and suggestions of `seven` name `siete` (the pairing followed only
    the last step: the flags of the first items were lost and `seven` read as removed)."""
    import dsbuild
    from dsbuild.catalog import Catalog
    from dsbuild.cycle import run_flags_now

    manifest = make_imagefolder(tmp_path / "p")
    (run_id,) = sql(manifest, "SELECT run_id FROM runs WHERE kind = 'mislabels'")[0]
    flags = sql(manifest, "SELECT image_id, given_label FROM issue_rows WHERE run_id = ? AND is_issue "
                          "AND kind = 'label'", [run_id])
    of_seven = sorted(i for i, given in flags if given == "seven")
    assert of_seven, flags
    data = manifest.parent / "data"
    (data / "seven").rename(data / "sept")
    build(manifest)
    (data / "sept").rename(data / "siete")
    build(manifest)
    want = {i: successor(manifest, i) for i in of_seven}
    assert {lab for (lab,) in (sql(manifest, "SELECT class_label FROM items WHERE image_id = ?", [n])[0]
                               for n in want.values())} == {"siete"}
    ds = dsbuild.load_manifest(manifest).datasets["digits"]
    with Catalog.open_readonly(dsbuild.load_manifest(manifest).catalog) as cat:
        now = run_flags_now(cat, ds, run_id)
    assert {i: now.moved.get(i) for i in of_seven} == want
    assert now.follow == {"seven": "siete"} and now.gone == {}
    assert now.changes == {"seven": "class 'seven' renamed 'siete'"}


def keymap(page: str) -> dict[str, str]:
    """key → class, as the page lists them (and its script reads them)."""
    return {k: html.unescape(v) for k, v in re.findall(r'<li data-key="([^"]*)" data-label="([^"]*)">', page)}


def test_class_keys_stay_with_their_class_when_a_folder_is_renamed(tmp_path: Path) -> None:
    """Fresh-user trial 10, L9: the keys followed the class list, sorted by name, so renaming `motor car` to `car`
    moved cat from 2 to 3 in the middle of a review. The keys are dealt in the latest mislabel run's class order:
    a renamed class takes its old name's key, a removed one leaves its key unused, and no other key moves; a new
    mislabel run deals them again by name."""
    manifest = make_imagefolder(tmp_path / "p")
    server = UiServer(manifest)
    try:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            assert client.get(server.url).status_code == 200
            assert keymap(client.get(server.base + "/").text) == {"1": "one", "2": "seven", "3": "zero"}
            (manifest.parent / "data" / "seven").rename(manifest.parent / "data" / "7")  # sorts first now
            build(manifest)
            assert keymap(client.get(server.base + "/").text) == {"1": "one", "2": "7", "3": "zero"}
            (manifest.parent / "data" / "one").rename(tmp_path / "one")  # removed: its key is left unused
            build(manifest)
            assert keymap(client.get(server.base + "/").text) == {"2": "7", "3": "zero"}
            record_mislabel_run(manifest)
            assert keymap(client.get(server.base + "/").text) == {"1": "7", "2": "zero"}
    finally:
        server.stop()


def test_class_keys_stay_with_their_class_when_a_folder_is_renamed_before_any_mislabel_run(tmp_path: Path) -> None:
    """Before any mislabel run the keys followed the class list, sorted by name: renaming `seven` to `7` moved `one`
    from 1 to 2. They are dealt in the order the catalog first saw the classes: a renamed class (renamed again too)
    takes its old name's key, a removed one leaves its key unused, a new one takes the next; the first mislabel run
    deals them again by name, as every run does."""
    write_digit_folders(tmp_path / "p")
    manifest = tmp_path / "p" / "datasets.toml"
    manifest.write_text(MANIFEST)
    build(manifest)
    data = manifest.parent / "data"
    server = UiServer(manifest)
    try:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            assert client.get(server.url).status_code == 200

            def keys() -> dict[str, str]:
                return keymap(client.get(server.base + "/").text)

            assert keys() == {"1": "one", "2": "seven", "3": "zero"}
            (data / "seven").rename(data / "7")  # sorts first now
            build(manifest)
            assert keys() == {"1": "one", "2": "7", "3": "zero"}
            (data / "7").rename(data / "sept")  # renamed again
            build(manifest)
            assert keys() == {"1": "one", "2": "sept", "3": "zero"}
            (data / "one").rename(tmp_path / "one")  # removed: its key is left unused
            build(manifest)
            assert keys() == {"2": "sept", "3": "zero"}
            (tmp_path / "one").rename(data / "a-one")  # back under a new name: its pictures' old key
            build(manifest)
            assert keys() == {"1": "a-one", "2": "sept", "3": "zero"}
            record_mislabel_run(manifest)
            assert keys() == {"1": "a-one", "2": "sept", "3": "zero"}
    finally:
        server.stop()
