"""The web app in a real browser: Debian's Chromium, headless, driven by selenium through chromedriver.

The app runs in a subprocess on 127.0.0.1 with a tiny random model. Without Chromium the test is skipped with a
reason that says it did not run, except under CI (`CI=true`), where a missing browser fails it: `.ci/run` installs
`chromium` and `chromium-driver` when they are missing.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from app_testing import save_tiny_model
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
NARRATIVE = "In this picture we can see a red circle and a blue square. The sky is above them."
# Typed into the narrative box only: the phrases are found automatically.
EXPECTED_PHRASES = ("a red circle", "a blue square", "The sky", "them")
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 90
RESULT_TIMEOUT_S = 60


def _browser_or_skip() -> tuple[str, str]:
    """Paths of chromium and chromedriver, with selenium importable; otherwise skip (fail under CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        problem = "selenium is not installed (pip install -e '.[test]')"
    else:
        problem = None if chromium and chromedriver else "Chromium is not installed (chromium, chromium-driver)"
    if problem is None:
        return chromium, chromedriver
    message = f"browser test NOT run: {problem}; install with `apt-get install -y chromium chromium-driver`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI must run it: .ci/run installs the browser)")
    pytest.skip(message)


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # Loopback only: a proxy from the environment must not see these requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path, minilm_path, monkeypatch):
    model_dir = save_tiny_model(tmp_path / "model", minilm_path)
    port = _free_loopback_port()
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_PROXY": LOOPBACK,
        "no_proxy": LOOPBACK,
    }
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.app", "--model_name_or_path", str(model_dir)]
            + ["--server_name", LOOPBACK, "--server_port", str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{LOOPBACK}:{port}/"
    try:
        _wait_for_server(url, process, log_path)
        # selenium talks to chromedriver over loopback HTTP too.
        monkeypatch.setenv("NO_PROXY", LOOPBACK)
        monkeypatch.setenv("no_proxy", LOOPBACK)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Root in a container: no sandbox; /dev/shm is small there.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_ground_and_see_the_masks(browser, app_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image_path = tmp_path / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_path)
    wait = WebDriverWait(browser, RESULT_TIMEOUT_S)

    browser.get(app_url)
    button = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#ground-button")))

    # Grounding without an image: the page says so.
    button.click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Upload an image first."))

    browser.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(image_path))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image-input img")))
    browser.find_element(By.CSS_SELECTOR, "#narrative-input textarea").send_keys(NARRATIVE)
    button.click()

    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#phrase-table"), "a blue square"))
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#phrase-switches"), "4. them"))
    highlighted = browser.find_element(By.CSS_SELECTOR, "#highlighted-narrative").text
    for phrase in EXPECTED_PHRASES:
        assert phrase in highlighted
        assert phrase in browser.find_element(By.CSS_SELECTOR, "#phrase-table").text
    overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
    assert overlay.get_attribute("src") and overlay.size["width"] > 100

    screenshot = tmp_path / "app.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0
    print(f"screenshot: {screenshot}")
