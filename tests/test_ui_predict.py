"""Predict in the review app, end to end: a real tiny fastai model, a real `dsbuild ui` process, headless Chromium.

Slow (a real training of one epoch on the digits project): marked ``slow``, so the
module runs with the other model tests at the end of the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from helpers import skimage_photo
from ui_browser import UiServer, chrome, wait_for
from ui_data import make_project

import dsbuild

pytestmark = pytest.mark.slow

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uipredict")
    manifest = make_project(root)
    dsbuild.train(dsbuild.load_manifest(manifest), "digits")
    return manifest


def test_predict_an_uploaded_photo_and_refuse_an_eps_named_jpg(trained: Path, tmp_path: Path) -> None:
    photo = tmp_path / "rocket.jpg"
    skimage_photo("rocket").save(photo, quality=90)
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(EPS)
    server = UiServer(trained)
    driver = chrome()
    try:
        driver.get(server.url)
        driver.get(server.base + "/predict")
        assert "Model: run digits-train-" in driver.find_element(By.TAG_NAME, "main").text
        upload = driver.find_element(By.ID, "files")
        upload.send_keys(str(photo))
        done = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#results .result.done"), timeout=180,
                        what="the prediction")[0]
        rows = [(r.find_element(By.CSS_SELECTOR, ".label").text, r.find_element(By.CSS_SELECTOR, ".p").text)
                for r in done.find_elements(By.CSS_SELECTOR, "tr")]
        assert sorted(lab for lab, _ in rows) == ["one", "seven", "zero"]  # top-k of the model's 3 classes
        probs = [float(p.rstrip("%")) for _, p in rows]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.5
        upload.send_keys(str(fake))
        refused = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#results .result.refused"), timeout=60,
                           what="the refusal")[0]
        assert refused.get_attribute("data-file") == "holiday.jpg"
        text = refused.find_element(By.CSS_SELECTOR, ".error").text
        assert text.startswith("holiday.jpg was refused: ") and ("EPS" in text or "not an image" in text)
    finally:
        driver.quit()
        server.stop()


def test_several_files_in_one_upload_each_checked_the_good_ones_predicted(trained: Path, tmp_path: Path) -> None:
    """Fresh-user trial 10, L9: the Predict page sent uploads one at a time (a model run each, ~2 s per image). The
    page sends the files of one pick or drop together (multipart, a `file` part each) and one model run predicts
    them; every file is checked as a build checks it (sniffed, allow-listed, size-limited), a bad one gets its own
    message and the good ones are still predicted, in order. Over a real server; then the page, in Chromium."""
    import io
    import re

    import httpx

    from ui_data import MAX_BYTES

    from dsbuild.ui.security import csrf_for

    photos = []
    for name in ("rocket", "coffee", "astronaut"):
        buf = io.BytesIO()
        skimage_photo(name).save(buf, format="JPEG", quality=90)
        photos.append((f"{name}.jpg", buf.getvalue()))
    big = b"\xff\xd8\xff\xe0" + b"\0" * (MAX_BYTES + 1)
    server = UiServer(trained)
    try:
        with httpx.Client(follow_redirects=True, timeout=180) as client:
            token = re.search(r"token=([^&\s]+)", server.url).group(1)
            assert client.get(server.url).status_code == 200
            files = [("file", (photos[0][0], photos[0][1], "image/jpeg")), ("file", ("holiday.jpg", EPS, "image/jpeg")),
                     ("file", (photos[1][0], photos[1][1], "image/jpeg")), ("file", ("huge.jpg", big, "image/jpeg")),
                     ("file", (photos[2][0], photos[2][1], "image/jpeg"))]
            r = client.post(server.base + "/api/predict", files=files, headers={"X-CSRF-Token": csrf_for(token)})
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert [x["file"] for x in results] == ["rocket.jpg", "holiday.jpg", "coffee.jpg", "huge.jpg", "astronaut.jpg"]
            for x in (results[0], results[2], results[4]):
                assert "error" not in x and sorted(t["label"] for t in x["top"]) == ["one", "seven", "zero"], x
                assert abs(sum(t["probability"] for t in x["top"]) - 1) < 1e-3
            assert results[1]["error"].startswith("holiday.jpg was refused: ")
            assert "EPS" in results[1]["error"] or "not an image" in results[1]["error"]
            assert results[3]["error"] == (f"huge.jpg is over the upload limit of {MAX_BYTES:,} bytes (the dataset's "
                                           "verify.max_bytes) — use a smaller image")
            # The same photo alone (the one-file request) gets the same answer.
            one = client.post(server.base + "/api/predict", content=photos[0][1],
                              headers={"X-CSRF-Token": csrf_for(token), "X-File-Name": "rocket.jpg"})
            assert one.status_code == 200, one.text
            alone, batched = one.json()["top"], results[0]["top"]  # in a batch of 3: equal up to float rounding
            assert [t["label"] for t in alone] == [t["label"] for t in batched]
            assert [t["probability"] for t in alone] == pytest.approx([t["probability"] for t in batched], abs=1e-5)
            empty = client.post(server.base + "/api/predict", files=[("other", ("x.txt", b"x", "text/plain"))],
                                headers={"X-CSRF-Token": csrf_for(token)})
            assert empty.status_code == 400 and empty.json()["error"] == (
                "the upload has no 'file' part — pick or drop image files")

        paths = []
        for name, data in photos[:2]:
            (tmp_path / name).write_bytes(data)
            paths.append(str(tmp_path / name))
        (tmp_path / "holiday.jpg").write_bytes(EPS)
        paths.insert(1, str(tmp_path / "holiday.jpg"))
        driver = chrome()
        try:
            driver.get(server.url)
            driver.get(server.base + "/predict")
            driver.find_element(By.ID, "files").send_keys("\n".join(paths))  # one pick of three files
            done = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(
                driver.find_elements(By.CSS_SELECTOR, "#results .result.done")), timeout=180, what="two predictions")
            assert sorted(d.get_attribute("data-file") for d in done) == ["coffee.jpg", "rocket.jpg"]
            (refused,) = driver.find_elements(By.CSS_SELECTOR, "#results .result.refused")
            assert refused.get_attribute("data-file") == "holiday.jpg"
            assert refused.find_element(By.CSS_SELECTOR, ".error").text.startswith("holiday.jpg was refused: ")
        finally:
            driver.quit()
    finally:
        server.stop()
