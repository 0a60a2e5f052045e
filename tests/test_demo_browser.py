"""The demo page at / in headless Chromium: upload a photo, see boxes, ages and distributions.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and UTKFace faces; skips
with the reason otherwise. With AGELENS_DEMO_SCREENSHOT=path it also saves a screenshot, with the
photo blurred (UTKFace images may not be redistributed): that is how docs/demo.png was made.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from tests.conftest import faces_in_test_split, needs_dataset

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    needs_dataset,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless-browser test skipped: Debian's chromium and chromium-driver are not installed "
        "(apt-get install chromium chromium-driver; .ci/run does this)",
    ),
]

# Where each face is pasted on the 800x520 canvas, and how large: the boxes must land there.
PLACES = [((120, 110), 200), ((470, 90), 220)]
# A third face, blurred hard: it is found, flagged blurred and greyed out (last in reading order).
BLURRED_PLACE = ((340, 330), 180)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    # Selenium Manager must not look for drivers online: we name the binaries ourselves.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    # As root in a container Chromium needs --no-sandbox; the network flags stop it from calling
    # home (this machine has no route out, and each refused connection costs time).
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1100,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def two_face_photo(path: Path) -> list[int]:
    faces = faces_in_test_split(5, 9, 1) + faces_in_test_split(60, 70, 1)
    canvas = Image.new("RGB", (800, 520), (205, 210, 215))
    for (face_path, _), (xy, size) in zip(faces, PLACES, strict=True):
        canvas.paste(Image.open(face_path).convert("RGB").resize((size, size)), xy)
    (blur_path, _), (xy, size) = faces_in_test_split(30, 40, 1)[0], BLURRED_PLACE
    blurred = Image.open(blur_path).convert("RGB").resize((size, size)).filter(ImageFilter.GaussianBlur(6))
    canvas.paste(blurred, xy)
    canvas.save(path, "JPEG", quality=92)
    return [age for _, age in faces]


def test_demo_uploads_a_photo_and_draws_boxes_ages_and_distributions(
    server: str, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    photo = tmp_path / "two_faces.jpg"
    true_ages = two_face_photo(photo)
    driver.get(f"{server}/")  # type: ignore[attr-defined]
    assert driver.title == "agelens demo"  # type: ignore[attr-defined]
    driver.find_element(By.ID, "file").send_keys(str(photo))  # type: ignore[attr-defined]
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".box span")) == 3)

    # The blurred face is drawn, but dashed and grey, and its card says why.
    unusable = driver.find_elements(By.CSS_SELECTOR, ".box.unusable")  # type: ignore[attr-defined]
    assert len(unusable) == 1
    poor = driver.find_element(By.CSS_SELECTOR, "#faces .face.unusable")  # type: ignore[attr-defined]
    assert poor.text.startswith("Face #3") and "Unusable: blurred" in poor.text, poor.text
    assert poor.value_of_css_property("opacity") == "0.55"
    # Boxes are in reading order (top-to-bottom, then left-to-right): the taller-placed face first.
    boxes = driver.find_elements(By.CSS_SELECTOR, ".box:not(.unusable)")  # type: ignore[attr-defined]
    img = driver.find_element(By.ID, "photo")  # type: ignore[attr-defined]
    scale = img.size["width"] / 800
    found = []
    for box in boxes:
        label = box.find_element(By.CSS_SELECTOR, "span").text
        m = re.fullmatch(r"#(\d): (\d{1,3}) y", label)
        assert m, label
        left = float(box.value_of_css_property("left").removesuffix("px")) / scale
        width = float(box.value_of_css_property("width").removesuffix("px")) / scale
        found.append((left, width, int(m.group(2))))
    found.sort()
    for (left, width, age), ((x, _), size), true_age in zip(found, PLACES, true_ages, strict=True):
        assert abs(left - x) < 0.35 * size and 0.4 * size < width < 1.3 * size, (left, width, x, size)
        assert abs(age - true_age) <= 15, (age, true_age)

    cards = driver.find_elements(By.CSS_SELECTOR, "#faces .face")  # type: ignore[attr-defined]
    assert len(cards) == 3
    assert all(re.search(r"Face #\d: [\d.]+ years \(90 % interval \d+", c.text) for c in cards)
    assert all("Usable - eyes" in c.text for c in cards[:2])
    # Each distribution canvas was drawn: count the bars' blue pixels.
    blue = driver.execute_script(  # type: ignore[attr-defined]
        """return [...document.querySelectorAll('#faces canvas')].map(c => {
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0x33 && d[i+2] === 0xcc) n++;
             return n; });"""
    )
    assert len(blue) == 3 and all(n > 50 for n in blue), blue
    status = driver.find_element(By.ID, "status").text  # type: ignore[attr-defined]
    assert status.startswith("3 face(s) (1 unusable) in") and "agelens-student" in status

    shot = os.environ.get("AGELENS_DEMO_SCREENSHOT")
    if shot:
        driver.execute_script("document.getElementById('photo').style.filter = 'blur(24px)';")  # type: ignore[attr-defined]
        driver.save_screenshot(shot)  # type: ignore[attr-defined]
