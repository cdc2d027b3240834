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
