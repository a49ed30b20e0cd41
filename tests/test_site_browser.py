"""The hub's web page in a real headless Chromium (Debian chromium + chromium-driver, driven by selenium):
log in, enroll a person by upload, see them on a door's status, review an unknown face and assign it,
forget a person. Screenshots go to .cache/artifacts/hub-browser/ (or $EDGEFACE_ARTIFACTS); the browser
console must stay free of errors."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from site_harness import new_site
from test_site_hub import ENROLLED, DoorProcess, door_toml, frames_folder, lfw, wait

from edgeface.device.site.broker import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert Path(binary).exists() and Path(driver).exists(), "install chromium and chromium-driver (.ci/run does)"
    opts = Options()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-gpu"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def hub_site(tmp_path_factory, models_dir, data_root):
    tmp = tmp_path_factory.mktemp("browser")
    paths, broker = new_site(tmp, ("front",))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "edgeface.device.site.hub.cli", "passwd", "--hub", str(paths.hub)],
                   input=PASSWORD + "\n", text=True, check=True, env=env, capture_output=True)
    port = free_port()
    log = open(tmp / "hub.log", "wb")
    hub = subprocess.Popen([sys.executable, "-m", "edgeface.device.site.hub.cli", "serve", "--hub", str(paths.hub),
                            "--models", str(models_dir), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                           env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        yield from _run(url, paths, hub, tmp, models_dir, data_root, port)
    finally:
        hub.terminate()
        hub.wait(20)
        broker.stop()


def _run(url, paths, hub, tmp, models_dir, data_root, port):

    def up():
        try:
            return urllib.request.urlopen(url + "/login", timeout=1).status == 200
        except OSError:
            return False

    assert wait(up, 60, 0.3), (tmp / "hub.log").read_text()[-2000:]
    work = tmp / "door-front"
    work.mkdir()
    door = DoorProcess("front", door_toml(work / "door.toml", paths.doors["front"], models_dir,
                                          frames_folder(tmp / "frames", data_root, 1), work), work).start()
    try:
        yield url, paths, door, tmp
    finally:
        door.stop()


def test_hub_web_page_in_headless_chromium(hub_site, data_root):
    from selenium.webdriver.common.by import By

    url, paths, door, tmp = hub_site
    shots = Path(os.environ.get("EDGEFACE_ARTIFACTS", REPO / ".cache" / "artifacts")) / "hub-browser"
    shots.mkdir(parents=True, exist_ok=True)
    b = chromium()
    errors = []

    def shot(name):
        b.save_screenshot(str(shots / f"{name}.png"))
        errors.extend(e for e in b.get_log("browser") if e["level"] == "SEVERE")

    def until(pred, timeout=30, reload=True):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(1)
            if reload:
                b.refresh()
        return False

    def shows(text, timeout=30):
        return until(lambda: text in b.page_source, timeout, reload=False)

    try:
        b.get(url + "/people")
        assert b.current_url.endswith("/login")  # not logged in: sent to the login page
        b.find_element(By.ID, "password").send_keys("wrong password")
        b.find_element(By.ID, "login").click()
        assert shows("wrong password")
        b.find_element(By.ID, "password").send_keys(PASSWORD)
        shot("01-login")
        b.find_element(By.ID, "login").click()
        assert until(lambda: b.current_url.endswith("/people"), 10, reload=False)
        # the door has seen Colin at least once before he is enrolled (his walk-in opens each 2.4 s loop; three
        # unknown visits span a whole loop): those unknown snapshots must go with him when he is forgotten below
        assert wait(lambda: len(door.rows("SELECT 1 FROM events WHERE decision = 'unknown'")) >= 3, 90), \
            door.log_text()[-2000:]
        # enroll by upload
        b.find_element(By.ID, "enroll-name").send_keys("Colin")
        photos = [str(lfw(data_root, ENROLLED, n)) for n in range(1, 6)]
        b.find_element(By.ID, "enroll-photos").send_keys("\n".join(photos))
        b.find_element(By.ID, "enroll").click()
        assert shows("enrolled Colin from 5 photo(s)", 60), b.page_source[-2000:]
        assert b.find_elements(By.CSS_SELECTOR, 'tr[data-name="Colin"] img.thumb')
        shot("02-enrolled")
        # the door's status shows the new gallery
        b.get(url + "/doors")
        assert until(lambda: b.find_elements(By.CSS_SELECTOR, 'tr[data-door="front"].online') and
                     b.find_element(By.CSS_SELECTOR, 'tr[data-door="front"] td.people').text.strip() == "1")
        assert "(behind)" not in b.find_element(By.CSS_SELECTOR, 'tr[data-door="front"]').text
        shot("03-door-status")
        # live events: Colin granted at the door
        b.get(url + "/events")
        assert until(lambda: "Colin" in b.find_element(By.ID, "events").text, 30, reload=False)
        shot("04-events")
        # unknown faces: Tony walks by, unrecognised; assign his group to a new person. His group is the one
        # holding an unknown face the hub received after Colin's first grant (a slow door may skip Tony's walk-in
        # of that loop, so "the newest group" could still be Colin's from before his enrollment)
        def first_grant():
            return door.rows("SELECT MIN(ts) FROM events WHERE identity = 'Colin' AND decision = 'grant'")[0][0]

        assert wait(first_grant, 30)
        since = first_grant()
        hub_db = json.loads((paths.hub / "hub.json").read_text())["database"]

        def tony_event():
            conn = sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True, timeout=10)
            try:
                # what the page lists (HubStore.unknown): an unknown visit logged at a track's end has no
                # snapshot, hence no embedding, and is not listed
                row = conn.execute("SELECT event_id FROM events WHERE kind = 'access' AND decision = 'unknown' AND "
                                   "reviewed = 0 AND embedding IS NOT NULL AND ts > ? ORDER BY ts DESC LIMIT 1",
                                   (since,)).fetchone()
            finally:
                conn.close()
            return row[0] if row else None

        assert wait(tony_event, 40), "Tony's walk-ins after Colin's enrollment should reach the hub as unknown"
        tony_id = tony_event()
        b.get(url + "/unknown")
        assert until(lambda: b.find_elements(By.CSS_SELECTOR, "section.group"), 40)
        shot("05-unknown")
        groups = b.find_elements(By.CSS_SELECTOR, "section.group")
        ids = [g.find_element(By.NAME, "events").get_attribute("value").split(",") for g in groups]
        tony = next((i for i, group_ids in enumerate(ids) if tony_id in group_ids), None)
        assert tony is not None, (tony_id, ids)
        group = groups[tony]
        tony_unknown = ids[tony]
        colin_unknown = [e for i, other in enumerate(ids) if i != tony for e in other]
        group.find_element(By.NAME, "name").send_keys("Tony")
        group.find_element(By.CSS_SELECTOR, "button.assign-button").click()
        assert shows("enrolled as Tony"), b.page_source[-1500:]
        b.get(url + "/people")
        assert b.find_elements(By.CSS_SELECTOR, 'tr[data-name="Tony"]')
        b.get(url + "/doors")
        assert until(lambda: b.find_element(By.CSS_SELECTOR, 'tr[data-door="front"] td.people').text.strip() == "2")
        shot("06-assigned")
        # the assigned faces were enrolled: the door now grants Tony
        assert wait(lambda: door.rows("SELECT 1 FROM events WHERE identity = 'Tony' AND decision = 'grant'"), 30)
        # an access window for Tony (UTC), saved and shown back
        b.get(url + "/people")
        until_input = b.find_element(By.CSS_SELECTOR, 'tr[data-name="Tony"] form.window input[name="valid_until"]')
        b.execute_script("arguments[0].value = '2030-12-24T18:00';", until_input)
        b.find_element(By.CSS_SELECTOR, 'tr[data-name="Tony"] form.window button').click()
        assert shows("access window saved")
        assert b.find_element(By.CSS_SELECTOR, 'tr[data-name="Tony"] form.window input[name="valid_until"]'
                              ).get_attribute("value") == "2030-12-24T18:00"
        # forget Colin (confirm dialog)
        b.get(url + "/people")
        b.find_element(By.CSS_SELECTOR, 'tr[data-name="Colin"] button.forget').click()
        b.switch_to.alert.accept()
        assert shows("Colin forgotten")
        assert not b.find_elements(By.CSS_SELECTOR, 'tr[data-name="Colin"]')
        shot("07-forgotten")
        assert wait(lambda: "Colin" not in door.people(), 10)
        b.get(url + "/events")
        time.sleep(2)
        assert "Colin" not in b.find_element(By.ID, "events").text
        shot("08-events-after-forget")
        # his unknown snapshots from before he was enrolled went with him (the hub matched them to him)
        cookie = b.get_cookie("edgeface_hub")["value"]

        def status(path):
            req = urllib.request.Request(url + path, headers={"Cookie": f"edgeface_hub={cookie}"})
            try:
                return urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as exc:
                return exc.code

        gone = [e for e in colin_unknown if status(f"/events/{e}/snapshot.jpg") == 404]
        assert gone, ("Colin's unknown snapshots from before his enrollment should be erased with him: "
                      f"groups {ids}, statuses {[status(f'/events/{e}/snapshot.jpg') for e in colin_unknown]}")
        assert status(f"/events/{tony_unknown[0]}/snapshot.jpg") == 200  # Tony's stay (reviewed, enrolled)
        # a form posted without the CSRF token is refused
        b.execute_script("""document.body.insertAdjacentHTML('beforeend',
            '<form id=evil method=post action=/people/enroll><input name=name value=x></form>');
            document.getElementById('evil').submit();""")
        assert shows("CSRF check failed")
        b.get_log("browser")  # the 403 of that forged post is expected, not a page error
        b.get(url + "/people")
        shot("09-final")
    finally:
        b.quit()
    assert not errors, errors
    assert len(list(shots.glob("*.png"))) >= 9
