"""One hub and three door processes on a real Mosquitto (TLS, passwords, ACL): enroll at the hub -> every
door grants within 5 s; the broker killed and restarted -> every event reaches the hub exactly once; a door
offline while people are added and forgotten catches up; forget -> no door grants, events and snapshots
gone everywhere."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from site_harness import new_site

pytestmark = pytest.mark.slow

DOORS = ("front", "back", "side")
ENROLLED, LATER = "Colin_Powell", "Tony_Blair"


def lfw(data_root, person, n):
    return data_root / "lfw" / "images_deepfunneled" / person / f"{person}_{n:04d}.jpg"


def frames_folder(folder: Path, data_root, door_index: int) -> Path:
    """A looping 'camera' at 20 fps: walk-ins of two people (8 photos each, each photo held for 2 frames),
    each followed by 8 empty frames; one loop lasts 2.4 s."""
    folder.mkdir(parents=True)
    blank = np.full((250, 250, 3), 120, np.uint8)
    i = 0
    for person, first in ((ENROLLED, 20 + 8 * door_index), (LATER, 20 + 8 * door_index)):
        for n in range(first, first + 8):
            for _ in range(2):
                cv2.imwrite(str(folder / f"{i:04d}.jpg"), cv2.imread(str(lfw(data_root, person, n))))
                i += 1
        for _ in range(8):  # > [tracker] max_missed_frames: the track ends, the next walk-in is a new visit
            cv2.imwrite(str(folder / f"{i:04d}.jpg"), blank)
            i += 1
    return folder


def door_toml(path: Path, site_dir: Path, models_dir, frames: Path, work: Path) -> Path:
    path.write_text(f"""
[source]
kind = "folder"
uri = "{frames}"
realtime = true
loop = true
fps = 20
[models]
dir = "{models_dir}"
threads = 1
[liveness]
check = "none"
[door]
pin_factory = "mock"
unlock_seconds = 0.3
cooldown_seconds = 0.2
[events]
path = "{work / 'events.db'}"
snapshot_dir = "{work / 'snapshots'}"
[gallery]
path = "{work / 'gallery.db'}"
""" + (site_dir / "site.toml").read_text() + "keepalive_seconds = 5\n")  # the last will fires 7.5 s after a crash
    return path


class DoorProcess:
    def __init__(self, name, toml, work):
        self.name, self.toml, self.work = name, toml, work
        self.proc = None

    def start(self):
        log = open(self.work / "door.log", "ab")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeface.device.cli", "-v", "-c", str(self.toml), "run",
                                      "--json"], stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rows(self, sql, params=()):
        conn = sqlite3.connect(f"file:{self.work / 'events.db'}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def people(self):
        conn = sqlite3.connect(f"file:{self.work / 'gallery.db'}?mode=ro", uri=True, timeout=10)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM people")}
        finally:
            conn.close()

    def log_text(self):
        return (self.work / "door.log").read_text(errors="replace")


def wait(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def running_site(tmp_path_factory, models_dir, data_root, recognizer):
    from edgeface.device.app import manifest_threshold
    from edgeface.device.site.hub.service import Hub, load_config

    tmp = tmp_path_factory.mktemp("multi")
    paths, broker = new_site(tmp, DOORS)
    cfg = load_config(paths.hub / "hub.json")
    cfg["ca_file"] = str(paths.hub / "ca.crt")
    recognizer.min_cosine_similarity = manifest_threshold(recognizer.embedder, "far_0.001")
    hub = Hub(cfg, [recognizer]).start()
    assert hub.wait_connected(10), hub.state.last_error
    doors = {}
    for i, d in enumerate(DOORS):
        work = tmp / f"door-{d}"
        work.mkdir()
        frames = frames_folder(tmp / f"frames-{d}", data_root, i)
        doors[d] = DoorProcess(d, door_toml(work / "door.toml", paths.doors[d], models_dir, frames, work), work).start()
    ok = wait(lambda: {x["door"] for x in hub.store.doors() if x.get("state") == "online"} >= set(DOORS), 90, 0.5)
    assert ok, {d: p.log_text()[-2000:] for d, p in doors.items()}
    yield paths, broker, hub, doors
    for p in doors.values():
        p.stop()
    hub.close()
    broker.stop()


def grants(hub, name, door=None, after=0.0):
    return [e for e in hub.store.events(5000, door=door) if e["identity"] == name and e["decision"] == "grant"
            and (e["ts"] or 0) >= after]


def test_enroll_at_the_hub_every_door_grants_within_5_s(running_site, data_root):
    paths, broker, hub, doors = running_site
    photos = [(p.name, p.read_bytes()) for p in (lfw(data_root, ENROLLED, n) for n in range(1, 6))]
    t_upload = time.time()
    r = hub.enroll_images("Colin", photos)  # embeds the photos, stores and publishes the signed record
    t0 = time.time()
    assert r.person_id and len(r.accepted) >= 4, r.rejected
    assert wait(lambda: all(grants(hub, "Colin", d, t0) for d in DOORS), 20, 0.1), \
        {d: p.log_text()[-1500:] for d, p in doors.items()}
    first = {d: min(e["ts"] for e in grants(hub, "Colin", d, t0)) - t0 for d in DOORS}
    print(f"enrollment at the hub took {t0 - t_upload:.2f} s; then seconds to the first grant per door "
          f"(he walks in every 2.4 s): {first}")
    assert max(first.values()) <= 5.0, first
    # unknown faces (Tony, not enrolled) reached the hub with snapshots, for review
    assert wait(lambda: any(e["decision"] == "unknown" and e["has_snapshot"] for e in hub.store.events(500)), 10)
    assert hub.store.unknown()


def test_broker_killed_and_restarted_every_event_reaches_the_hub_once(running_site):
    paths, broker, hub, doors = running_site
    broker.stop(kill=True)
    time.sleep(4)  # doors keep deciding and logging; events wait in their outboxes
    pending = {d: p.rows("SELECT COUNT(*) FROM outbox")[0][0] for d, p in doors.items()}
    assert sum(pending.values()) > 0, pending
    broker.start()
    assert wait(lambda: all(x.get("state") == "online" for x in hub.store.doors()), 30, 0.5)

    def drained():
        return all(p.rows("SELECT COUNT(*) FROM outbox")[0][0] == 0 for p in doors.values())

    # compare while no door is logging: stop them, then every logged event must be at the hub, once
    for p in doors.values():
        p.stop()
    for p in doors.values():
        p.start()
    assert wait(lambda: all(x.get("state") == "online" for x in hub.store.doors()), 60, 0.5)
    for p in doors.values():
        p.stop()
    time.sleep(1.0)
    for d, p in doors.items():
        door_n = p.rows("SELECT COUNT(*) FROM events")[0][0]
        left = p.rows("SELECT COUNT(*) FROM outbox")[0][0]
        # events logged by a stopping door after its link closed wait for the next start (left)
        assert wait(lambda d=d, n=door_n - left: hub.store.count_events(d) == n, 20, 0.2), \
            (d, door_n, left, hub.store.count_events(d))
    for p in doors.values():
        p.start()
    assert wait(drained, 60, 0.5)
    assert wait(lambda: all(x.get("state") == "online" for x in hub.store.doors()), 60, 0.5)


def test_offline_door_catches_up_and_forget_erases_everywhere(running_site, data_root):
    paths, broker, hub, doors = running_site
    side = doors["side"]
    side.proc.kill()  # a crash (power cut): no goodbye; the broker publishes the door's last will
    side.proc.wait()
    assert wait(lambda: next(x for x in hub.store.doors() if x["door"] == "side")["state"] == "offline", 20)
    assert "Colin" in side.people()
    colin = hub.store.person_id("Colin")
    tony = [(p.name, p.read_bytes()) for p in (lfw(data_root, LATER, n) for n in range(1, 6))]
    t_add = time.time()
    assert hub.enroll_images("Tony", tony).person_id
    hub.forget(colin)
    t_forget = time.time()
    hub.flush()
    online = [doors["front"], doors["back"]]
    assert wait(lambda: all("Colin" not in p.people() and "Tony" in p.people() for p in online), 10)
    assert wait(lambda: all(grants(hub, "Tony", d.name, t_add) for d in online), 20)
    # Colin: events and snapshots erased at the hub and on the online doors
    assert not [e for e in hub.store.events(100000) if e["identity"] == "Colin"]
    for p in online:
        assert wait(lambda p=p: not p.rows("SELECT 1 FROM events WHERE identity = 'Colin'"), 10)
    side.start()
    assert wait(lambda: "Tony" in side.people() and "Colin" not in side.people(), 60), side.log_text()[-2000:]
    assert wait(lambda: not side.rows("SELECT 1 FROM events WHERE identity = 'Colin'"), 10)
    assert wait(lambda: next(x for x in hub.store.doors() if x["door"] == "side").get("gallery_version")
                == hub.store.version, 20)
    time.sleep(3)  # Colin keeps walking in front of every door: nobody grants him any more
    for p in doors.values():
        assert not p.rows("SELECT 1 FROM events WHERE identity = 'Colin'")
        snaps = {r[0] for r in p.rows("SELECT snapshot FROM events WHERE snapshot IS NOT NULL")}
        on_disk = {str(s) for s in (p.work / "snapshots").iterdir()}
        assert on_disk <= snaps | {s for s in on_disk if s.endswith(".tmp")}, "orphan snapshot files after erasure"
    assert not grants(hub, "Colin", after=t_forget)
    assert wait(lambda: all(grants(hub, "Tony", d, t_add) for d in DOORS), 20)
