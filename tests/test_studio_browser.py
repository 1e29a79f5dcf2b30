"""magicme studio in a real browser: Debian's chromium, driven by selenium through chromedriver.

A user's session: upload photos, train, insert the identity into a prompt, generate, watch
the video play; then bad input (an empty prompt, an unknown identity, a text file as a
photo), each a message on the page, with the server still answering after. Without a
browser these tests skip, except where MAGICME_BROWSER_TESTS=required (CI sets it): there a
missing browser fails them. MAGICME_SCREENSHOT=PATH keeps the screenshot (the README's).
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.studio_server import studio, world_photos

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("MAGICME_BROWSER_TESTS") == "required":
        pytest.fail("MAGICME_BROWSER_TESTS=required, but chromium or chromedriver is missing", pytrace=False)
    pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

LONG = 600  # seconds: training and a render on a loaded 2-core CPU


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    """A browser on a fresh studio; yields (driver, url, photos)."""
    root = tmp_path_factory.mktemp("browser")
    photos = world_photos(root / "photos")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(argument)
    with studio(root / "workspace") as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: "Model:" in d.find_element(By.ID, "model-line").text)
            yield driver, url, photos
        finally:
            driver.quit()


def type_into(driver, selector: str, text: str) -> None:
    """Replace a field's text, once the page has drawn it (an opened accordion draws a moment later)."""
    fields = f"{selector} textarea, {selector} input"
    field = WebDriverWait(driver, 30).until(
        lambda d: next((f for f in d.find_elements(By.CSS_SELECTOR, fields) if f.is_displayed()), None)
    )
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(str(text))
    field.send_keys(Keys.TAB)  # Gradio takes the value on blur


def tab(driver, name: str) -> None:
    driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()


def page_says(driver, text: str, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def test_photos_to_a_playing_video(page, tmp_path: Path) -> None:
    driver, _, photos = page
    driver.find_element(By.CSS_SELECTOR, "#photos input[type=file]").send_keys("\n".join(map(str, photos)))
    WebDriverWait(driver, 30).until(lambda d: "photo-4.mask" in d.find_element(By.ID, "photos").text)
    type_into(driver, "#identity-name", "hero")
    type_into(driver, "#training-steps", 20)
    driver.find_element(By.ID, "train").click()
    WebDriverWait(driver, LONG).until(lambda d: "ready" in d.find_element(By.ID, "train-status").text)

    tab(driver, "Generate")
    driver.find_element(By.ID, "insert").click()
    prompt = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
    WebDriverWait(driver, 30).until(lambda d: "<hero>" in prompt.get_attribute("value"))
    prompt.send_keys(" in the forest", Keys.TAB)
    driver.find_element(By.CSS_SELECTOR, "#settings button, #settings .label-wrap").click()
    type_into(driver, "#frames", 8)
    type_into(driver, "#inference-steps", 4)
    face_vcd = driver.find_element(By.CSS_SELECTOR, "#face-vcd input[type=checkbox]")
    assert not face_vcd.is_selected()  # off for the world, as its recipe is
    face_vcd.click()
    driver.find_element(By.ID, "generate").click()
    video = WebDriverWait(driver, LONG).until(lambda d: d.find_element(By.CSS_SELECTOR, "#video video[src]"))
    driver.execute_script("arguments[0].muted = true; arguments[0].play();", video)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].currentTime;", video) > 0)
    assert driver.execute_script("return arguments[0].videoWidth;", video) == 128  # the 2x upscale of 64 px
    page_says(driver, "+ Face VCD")  # the metrics table, one row per stage
    screenshot = Path(os.environ.get("MAGICME_SCREENSHOT") or tmp_path / "studio.png")
    driver.execute_script("window.scrollTo(0, 0);")
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


def test_bad_input_shows_a_message_and_the_page_keeps_working(page, tmp_path: Path) -> None:
    driver, url, photos = page
    tab(driver, "Generate")
    type_into(driver, "#prompt", "")
    driver.find_element(By.ID, "generate").click()
    page_says(driver, "write a prompt")
    type_into(driver, "#prompt", "a photo of <nobody> person")
    driver.find_element(By.ID, "generate").click()
    page_says(driver, "unknown identity <nobody>")

    tab(driver, "Identities")
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a photo")
    upload = driver.find_element(By.CSS_SELECTOR, "#photos input[type=file]")
    upload.send_keys("\n".join(map(str, [*photos[:4], text])))
    WebDriverWait(driver, 30).until(lambda d: "notes" in d.find_element(By.ID, "photos").text)
    type_into(driver, "#identity-name", "broken")
    driver.find_element(By.ID, "train").click()
    page_says(driver, "notes.png: not a readable image")

    driver.get(url)  # the server still answers, and still lists what was made
    WebDriverWait(driver, 60).until(lambda d: "Model:" in d.find_element(By.ID, "model-line").text)
    page_says(driver, "hero")
