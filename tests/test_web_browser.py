"""The page of ``voice-infra serve`` in a real browser: Debian's headless Chromium driven
through chromium-driver (Selenium), with Chromium's fake microphone. Record, upload, see it
listed, play it back through its presigned URL, delete. A screenshot is kept in
``$VOICE_INFRA_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from web_server import ServerThread, free_port

from voice_infra import Settings
from voice_infra.web.app import create_app
from voice_infra.web.auth import mint_token
from voice_infra.web.settings import WebSettings, load_secret

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
    reason="chromium and chromium-driver are not installed (scripts/test.sh installs them)",
)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900",
    ]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_record_upload_list_play_and_delete_in_chromium(browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver: object = browser
    web = WebSettings(secret_file=tmp_path / "web-secret")
    core = Settings.from_keywords(storage={"backend": "fs", "path": str(tmp_path / "data")})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(web, core, public_base_url=base)
    token = mint_token(load_secret(web), "browser-user", 600)
    with ServerThread(app, port=port):
        find = driver.find_element  # type: ignore[attr-defined]
        driver.get(base)  # type: ignore[attr-defined]
        find(By.ID, "token").send_keys(token)
        find(By.ID, "signin-button").click()
        wait_for(lambda: find(By.ID, "message-list").get_attribute("data-count") == "0",
                 "the empty list")  # fmt: skip
        find(By.ID, "record").click()
        wait_for(lambda: "recording" in find(By.ID, "recording-state").text, "recording")
        time.sleep(1.5)
        find(By.ID, "stop").click()
        wait_for(lambda: find(By.ID, "message-list").get_attribute("data-count") == "1",
                 "the uploaded message in the list")  # fmt: skip
        stored = list((tmp_path / "data").rglob("*%blob"))
        assert len(stored) == 1 and stored[0].stat().st_size > 1000
        assert find(By.ID, "limit-policy").text.startswith('"')  # headers shown on the page
        item = find(By.CSS_SELECTOR, "#message-list li")
        item.find_element(By.CSS_SELECTOR, "button.play").click()
        wait_for(lambda: item.get_attribute("data-played") in ("playing", "ended"), "playback")
        current = driver.execute_script(  # type: ignore[attr-defined]
            "return document.querySelector('#message-list audio').currentTime"
        )
        ended = item.get_attribute("data-played") == "ended"
        assert ended or current > 0
        artifacts = Path(os.environ.get("VOICE_INFRA_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "web-page.png"))  # type: ignore[attr-defined]
        item.find_element(By.CSS_SELECTOR, "button.delete").click()
        wait_for(lambda: find(By.ID, "message-list").get_attribute("data-count") == "0",
                 "the list after deleting")  # fmt: skip
        assert not list((tmp_path / "data").rglob("*%blob"))
