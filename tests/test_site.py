"""The door side of a site on a real Mosquitto (TLS, password file, ACL) started on a free 127.0.0.1 port:
signed gallery sync, erasure, refused messages, outbox through a broker restart, presence, commands."""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from site_harness import LogLines, Watcher, new_site, wait_until

from edgeface.device.config import DeviceConfig
from edgeface.device.site import door_topic, gallery_topic
from edgeface.device.site.commands import command_body
from edgeface.device.site.records import encode_vectors, load_signing_key, sign

gpiozero = pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faces(recognizer, data_root):
    """Real embeddings of two bbt people (the door's embedder space)."""
    from edgeface import read_image

    out = {}
    for name in ("penny", "amy"):
        vecs = [recognizer.embed(read_image(p))[0][1] for p in sorted((data_root / "bbt" / name).glob("*.png"))[:3]]
        out[name] = np.stack(vecs)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    paths, broker = new_site(tmp_path_factory.mktemp("site"))
    yield paths, broker
    broker.stop()


@pytest.fixture()
def logs():
    h = LogLines()
    logging.getLogger("edgeface").addHandler(h)
    logging.getLogger("edgeface").setLevel(logging.INFO)
    yield h
    logging.getLogger("edgeface").removeHandler(h)


class Door:
    """A door's site link with a real gallery, event log (snapshots) and a mock relay."""

    def __init__(self, paths, tmp, recognizer, door="front", remote_unlock=False, password_file=None):
        from edgeface.device.door import DoorController
        from edgeface.device.events import EventLog
        from edgeface.device.site.link import SiteLink, ensure_gallery

        d = paths.doors[door]
        cfg = DeviceConfig().replace(site={
            "enabled": True, "site": "office", "door_id": door, "host": "127.0.0.1", "port": paths.port,
            "password_file": password_file or str(d / "password"), "ca_file": str(d / "ca.crt"),
            "hub_public_key": str(d / "hub_public_key.pem"), "remote_unlock": remote_unlock},
            door={"pin_factory": "mock"})
        tmp.mkdir(parents=True, exist_ok=True)
        self.gallery_path = str(tmp / f"{door}-gallery.db")
        ensure_gallery(self.gallery_path, recognizer)
        self.events = EventLog(tmp / f"{door}-events.db", snapshot_dir=tmp / f"{door}-snaps")
        self.relay = MockFactory()
        self.door = DoorController(cfg.door, pin_factory=self.relay)
        self.link = SiteLink(cfg.site, self.gallery_path, self.events, self.door, {"embedder": recognizer.embedder_id},
                             0.6, recognizer.embedder_id).start()

    def online(self):
        assert self.link.state.connected.wait(10), self.link.state.last_error
        time.sleep(0.3)  # its subscriptions
        return self

    def people(self):
        from edgeface import Gallery

        with Gallery.open(self.gallery_path) as g:
            return {p.name: p.num_embeddings for p in g.people()}

    def wait(self, pred, timeout=10.0):
        return wait_until(pred, timeout)

    def close(self):
        self.link.close()
        self.door.close()
        self.events.close()


class Hub:
    """Publishes signed records and commands as the hub user (what edgeface-hub does)."""

    last_version = 0  # the highest record version any Hub of this test session has published

    def __init__(self, paths, space):
        self.paths, self.space = paths, space
        self.key = load_signing_key(paths.hub / "hub_signing_key.pem")
        self.w = Watcher(paths, "hub", [door_topic("office", "+", "event"), door_topic("office", "+", "state")])
        self.w.wait_connected()
        # versions only grow across the tests sharing the broker (its retained records outlive a test): start
        # above every version any earlier Hub of this session used, not at the current second
        self.version = max(int(time.time() * 1000), Hub.last_version)

    def record(self, pid, name, vecs=None, deleted=False, space=None, **extra):
        self.version += 1
        Hub.last_version = max(Hub.last_version, self.version)
        body = {"type": "person", "site": "office", "id": pid, "name": name, "version": self.version,
                "deleted": deleted, "embeddings": {} if deleted else {space or self.space: encode_vectors(vecs)}}
        body.update(extra)
        return body

    def publish(self, topic, payload, retain=True):
        self.w.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def put(self, body):
        self.publish(gallery_topic("office", body["id"]), sign(body, self.key))

    def command(self, door, action):
        self.publish(door_topic("office", door, "cmd"), sign(command_body("office", door, action), self.key), False)

    def close(self):
        self.w.close()


def test_signed_records_sync_and_tombstone_erases_events_and_snapshots(site, tmp_path, recognizer, faces, logs):
    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    door = Door(paths, tmp_path, recognizer)
    try:
        hub.put(hub.record("p-penny", "penny", faces["penny"]))
        assert door.wait(lambda: door.people().get("penny") == 3), logs.lines[-5:]
        # an event about penny, with a snapshot, reaches the hub with a stable id
        door.events.log("access", identity="penny", score=0.8, decision="grant", detail="test",
                        snapshot=np.full((64, 64, 3), 128, np.uint8))
        assert hub.w.wait_for(lambda: any(e.get("identity") == "penny" for e in hub.w.json("/event")))
        ev = next(e for e in hub.w.json("/event") if e.get("identity") == "penny")
        assert len(ev["event_id"]) == 32 and ev["door"] == "front" and ev["snapshot"]
        snaps = list((tmp_path / "front-snaps").iterdir())
        assert snaps
        # presence: retained online state with the gallery version
        assert hub.w.wait_for(lambda: any(s.get("gallery_version") == hub.version for s in hub.w.json("front/state")))
        # rename, then tombstone: person, events and snapshots gone
        hub.put(hub.record("p-penny", "Penny H", faces["penny"][:2]))
        assert door.wait(lambda: door.people() == {"Penny H": 2})
        door.events.log("access", identity="Penny H", decision="grant", snapshot=np.zeros((8, 8, 3), np.uint8) + 9)
        hub.put(hub.record("p-penny", "Penny H", deleted=True))
        assert door.wait(lambda: door.people() == {})
        assert door.wait(lambda: not door.events.events(limit=None, kind="access"))
        assert not list((tmp_path / "front-snaps").iterdir())
        # a stale replay of an old version changes nothing
        old = hub.record("p-penny", "penny", faces["penny"])
        old["version"] = 1
        hub.put(old)
        time.sleep(0.5)
        assert door.people() == {}
        hub.put(hub.record("p-penny", "Penny H", deleted=True))  # leave the tombstone retained
    finally:
        door.close()
        hub.close()


def test_bad_messages_are_refused_with_one_line_and_the_door_stays_locked(site, tmp_path, recognizer, faces, logs):
    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    door = Door(paths, tmp_path, recognizer).online()  # subscribed: the garbage command below is not retained
    try:
        good = hub.record("p-amy", "amy", faces["amy"])
        tampered = json.loads(sign(good, hub.key))
        tampered["body"]["name"] = "mallory"
        unsigned = json.dumps({"body": hub.record("p-x1", "x1", faces["amy"])}).encode()
        wrong_dim = hub.record("p-x2", "x2", np.ones((1, recognizer.embedder.dim + 3), np.float32))
        other_space = hub.record("p-x3", "x3", faces["amy"], space="another-embedder-v9")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        forged = sign(hub.record("p-x4", "x4", faces["amy"]), Ed25519PrivateKey.generate())
        cases = {
            "p-a": (b"{not json", "not JSON"),
            "p-b": (unsigned, "unsigned"),
            "p-amy": (json.dumps(tampered).encode(), "bad signature"),
            "p-x4": (forged, "bad signature"),
            "p-x2": (sign(wrong_dim, hub.key), "embedding of"),
            "p-big": (b"x" * (10 * 1024 * 1024), "ignored (over [site] max_payload_bytes"),
        }
        for pid, (payload, _) in cases.items():
            hub.publish(gallery_topic("office", pid), payload)
        hub.put(other_space)
        hub.publish(door_topic("office", "front", "cmd"), b"\xff\xfe garbage", False)
        # a valid record after all of them is still applied: the link survived
        hub.put(hub.record("p-ok", "amy", faces["amy"]))
        assert door.wait(lambda: door.people().get("amy") == 3), logs.lines[-10:]
        for pid, (_, text) in cases.items():
            hits = [line for line in logs.having(text) if pid in line or "max_payload" in text]
            assert len(hits) == 1, (pid, text, logs.lines)
        assert len(logs.having("another-embedder-v9")) == 1
        assert len(logs.having("command on")) == 1
        assert door.door.locked and not door.relay.pin(17).state
        # the unsigned/forged/tampered names never reached the gallery
        assert not {"x1", "x2", "x3", "x4", "mallory"} & set(door.people())
    finally:
        door.close()
        hub.close()
    # cleanup of retained garbage for the other tests on this broker
    w = Watcher(paths, "hub", []).wait_connected()
    for pid in ("p-a", "p-b", "p-amy", "p-x4", "p-x2", "p-big", "p-x3", "p-ok"):
        w.client.publish(gallery_topic("office", pid), b"", qos=1, retain=True).wait_for_publish(5)
    w.close()


def test_wrong_password_is_one_line_and_the_door_decides_alone(site, tmp_path, recognizer, logs):
    paths, _ = site
    bad = tmp_path / "wrong"
    bad.write_text("not-the-password")
    door = Door(paths, tmp_path, recognizer, door="back", password_file=str(bad))
    try:
        time.sleep(4)  # several reconnect attempts
        assert not door.link.state.connected.is_set()
        refusals = logs.having("broker refused the connection")
        assert len(refusals) == 1 and "not authorized" in refusals[0].lower(), refusals
        # offline: events still logged and kept in the outbox
        door.events.log("access", decision="unknown")
        assert door.link.outbox.count() >= 1 and door.door.locked
    finally:
        door.close()


def test_acl_door_cannot_publish_as_another_door_or_write_the_gallery(site, tmp_path, recognizer, faces, logs):
    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    door_b = Door(paths, tmp_path, recognizer, door="back")
    a = Watcher(paths, "front").wait_connected()
    try:
        key = hub.key
        infos = [a.client.publish(door_topic("office", "back", "event"), json.dumps(
                     {"event_id": "f" * 32, "door": "back", "kind": "access", "decision": "grant"}), qos=1),
                 a.client.publish(gallery_topic("office", "p-evil"),
                                  sign(hub.record("p-evil", "evil", faces["amy"]), key), qos=1, retain=True),
                 a.client.publish(door_topic("office", "back", "cmd"),
                                  sign(command_body("office", "back", "unlock"), key), qos=1)]
        for i in infos:
            i.wait_for_publish(5)
        assert a.wait_for(lambda: len(a.published) == 3)
        assert all(not ok and "authori" in reason.lower() for ok, reason in a.published.values()), a.published
        time.sleep(0.5)
        assert not [e for e in hub.w.json("back/event") if e.get("event_id") == "f" * 32]
        assert "evil" not in door_b.people() and door_b.door.locked
        # the same door publishing its own event is fine
        ok = a.client.publish(door_topic("office", "front", "event"), b'{"event_id": "own"}', qos=1)
        ok.wait_for_publish(5)
        assert hub.w.wait_for(lambda: any(e.get("event_id") == "own" for e in hub.w.json("front/event")))
    finally:
        a.close()
        door_b.close()
        hub.close()


def test_outbox_survives_a_broker_restart_exactly_once(site, tmp_path, recognizer):
    paths, broker = site
    hub = Hub(paths, recognizer.embedder_id)
    door = Door(paths, tmp_path, recognizer, door="side")
    try:
        for i in range(20):
            door.events.log("access", decision="unknown", detail=f"before {i}")
        broker.stop(kill=True)
        for i in range(30):  # broker down: events wait in the outbox
            door.events.log("access", decision="unknown", detail=f"during {i}")
        assert door.link.outbox.count() >= 30
        broker.start()
        assert door.link.publisher.flush(60), door.link.outbox.count()
        hub.w.wait_connected(60)
        want = {f"before {i}" for i in range(20)} | {f"during {i}" for i in range(30)}
        assert hub.w.wait_for(lambda: want <= {e.get("detail") for e in hub.w.json("side/event")}, 60), \
            want - {e.get("detail") for e in hub.w.json("side/event")}
        ids = [e["event_id"] for e in hub.w.json("side/event") if e.get("detail") in want]
        assert len(set(ids)) == 50   # a hub keeps one copy per event_id (duplicates possible on the wire only)
    finally:
        door.close()
        hub.close()


def test_remote_commands_unlock_only_when_enabled_and_audited(site, tmp_path, recognizer, logs):
    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    locked = Door(paths, tmp_path / "a", recognizer, door="front").online()
    try:
        hub.command("front", "unlock")
        assert locked.wait(lambda: locked.events.events(kind="remote_unlock"))
        assert locked.door.locked and locked.events.events(kind="remote_unlock")[-1].decision == "deny"
        assert len(logs.having("remote unlock refused")) == 1
    finally:
        locked.close()
    opened = Door(paths, tmp_path / "b", recognizer, door="back", remote_unlock=True).online()
    try:
        body = command_body("office", "back", "unlock")
        hub.publish(door_topic("office", "back", "cmd"), sign(body, hub.key), False)
        assert opened.wait(lambda: opened.events.events(kind="remote_unlock"))
        assert opened.door.unlock_count == 1
        ev = opened.events.events(kind="remote_unlock")[-1]
        assert ev.decision == "grant"
        hub.publish(door_topic("office", "back", "cmd"), sign(body, hub.key), False)  # replay
        assert opened.wait(lambda: logs.having("replay"))
        assert opened.door.unlock_count == 1
        assert hub.w.wait_for(lambda: any(e.get("kind") == "remote_unlock" for e in hub.w.json("back/event")))
    finally:
        opened.close()
        hub.close()


def test_doctor_reports_the_site_link(site, tmp_path, recognizer, faces):
    from edgeface.device.site.link import doctor_checks

    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    door = Door(paths, tmp_path, recognizer, door="side").online()
    try:
        hub.put(hub.record("p-doc", "doc", faces["amy"]))
        assert door.wait(lambda: "doc" in door.people())
        checks = {c: (ok, d) for c, ok, d in doctor_checks(door.link.cfg, door.gallery_path)}
        assert checks["broker"][0] and "TLS verified" in checks["broker"][1], checks
        synced = f"door gallery version {hub.version}, hub {hub.version}"
        assert checks["sync"][0] and synced in checks["sync"][1], checks["sync"]
        bad = tmp_path / "bad"
        bad.write_text("nope")
        wrong = door.link.cfg.__class__(**{**door.link.cfg.__dict__, "password_file": str(bad)})
        checks = {c: (ok, d) for c, ok, d in doctor_checks(wrong, door.gallery_path, timeout=3)}
        assert not checks["broker"][0] and "Not authorized" in checks["broker"][1], checks
    finally:
        door.close()
        hub.close()
    w = Watcher(paths, "hub").wait_connected()
    w.client.publish(gallery_topic("office", "p-doc"), b"", qos=1, retain=True).wait_for_publish(5)
    w.close()


def test_home_assistant_discovery_and_unlock_button(site, tmp_path, recognizer):
    """The hub publishes HA discovery per door (button only with remote unlock); HA's button press goes
    through the hub, which signs the unlock command."""
    from edgeface.device.app import manifest_threshold
    from edgeface.device.site.hub.service import Hub as RealHub
    from edgeface.device.site.hub.service import load_config

    paths, _ = site
    cfg = load_config(paths.hub / "hub.json")
    cfg["database"] = str(tmp_path / "hub.db")
    recognizer.min_cosine_similarity = manifest_threshold(recognizer.embedder, "far_0.001")
    ha = Watcher(paths, "homeassistant", ["homeassistant/#", door_topic("office", "+", "event")]).wait_connected()
    hub = RealHub(cfg, [recognizer]).start()
    doors = [Door(paths, tmp_path / "f", recognizer, door="front").online(),
             Door(paths, tmp_path / "b", recognizer, door="back", remote_unlock=True).online()]
    try:
        def configs():
            with ha.lock:
                return {t: json.loads(p) for t, p in ha.messages if t.startswith("homeassistant/") and p}

        assert ha.wait_for(lambda: any("edgeface_office_back/unlock" in t for t in configs()), 15), list(configs())
        c = configs()
        assert "homeassistant/sensor/edgeface_office_front/last_person/config" in c
        assert "homeassistant/device_automation/edgeface_office_front/grant/config" in c
        assert not any("edgeface_office_front/unlock" in t for t in c)  # remote unlock disabled there
        button = c["homeassistant/button/edgeface_office_back/unlock/config"]
        ha.client.publish(button["command_topic"], button["payload_press"], qos=1).wait_for_publish(5)
        assert doors[1].wait(lambda: doors[1].events.events(kind="remote_unlock"), 10)
        assert doors[1].door.unlock_count == 1 and doors[0].door.unlock_count == 0
        # HA may not publish door commands itself (ACL): only the hub signs them
        info = ha.client.publish(door_topic("office", "front", "cmd"), b"{}", qos=1)
        info.wait_for_publish(5)
        assert ha.wait_for(lambda: info.mid in ha.published)
        assert not ha.published[info.mid][0]
    finally:
        for d in doors:
            d.close()
        hub.close()
        ha.close()


def test_bridge_carries_events_to_a_central_broker(tmp_path, recognizer):
    import getpass

    from edgeface.device.site.broker import BrokerProcess, add_bridge, free_port, make_central
    from edgeface.device.site.mqtt import BrokerSettings

    paths, site_broker = new_site(tmp_path / "s", ("front",))
    cport = free_port()
    cdir, cpw = make_central(tmp_path / "central", cport, ["office"], run_as=getpass.getuser())
    central = BrokerProcess(cdir / "mosquitto.conf", cport).start()
    site_broker.stop()
    add_bridge(paths.broker, "office", f"127.0.0.1:{cport}", cpw["bridge-office"], str(cdir / "ca.crt"))
    site_broker.start()
    door = Door(paths, tmp_path, recognizer, door="front").online()

    class Central(Watcher):
        def __init__(self):
            from edgeface.device.site.mqtt import make_client, start

            self.messages, self.lock, self.published = [], __import__("threading").Lock(), {}
            s = BrokerSettings("127.0.0.1", cport, "central-hub", cpw["central-hub"], str(cdir / "ca.crt"), "central-r")
            self.client, self.state = make_client(
                s, "central reader", persistent_session=True,
                on_connect=lambda c: c.subscribe("edgeface/#", qos=1),
                on_message=lambda t, p: self.messages.append((t, p)))
            start(self.client)

    reader = Central().wait_connected()
    try:
        assert reader.wait_for(lambda: any(s.get("state") == "online" for s in reader.json("front/state")), 15)
        for i in range(5):
            door.events.log("access", decision="unknown", detail=f"bridged {i}")
        assert reader.wait_for(lambda: {f"bridged {i}" for i in range(5)} <= {e.get("detail") for e in
                                                                               reader.json("front/event")}, 15)
        # the central broker away: the site keeps working, the bridge queues and delivers later
        central.stop()
        for i in range(5):
            door.events.log("access", decision="unknown", detail=f"while central down {i}")
        assert door.link.publisher.flush(10)  # the site broker took them
        central.start()
        assert reader.wait_for(lambda: {f"while central down {i}" for i in range(5)} <= {
            e.get("detail") for e in reader.json("front/event")}, 30)
        # the bridge user cannot write another site's subtree on the central broker
        assert "topic readwrite edgeface/office/#" in (cdir / "acl").read_text()
    finally:
        reader.close()
        door.close()
        site_broker.stop()
        central.stop()


def test_site_modules_import_nothing_optional_until_used():
    """The door runs exactly as before without paho-mqtt: importing the site code (and the device with a
    [site] section in its default config) loads neither paho, cryptography nor the hub's web stack."""
    import subprocess
    import sys

    code = """
import sys, json
import edgeface.device.app, edgeface.device.cli
from edgeface.device.config import DeviceConfig, default_toml
import edgeface.device.site.records, edgeface.device.site.sync, edgeface.device.site.outbox
import edgeface.device.site.presence, edgeface.device.site.commands, edgeface.device.site.link
import edgeface.device.site.broker, edgeface.device.site.mqtt
assert DeviceConfig().site.enabled is False and "[site]" in default_toml()
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
      ('paho', 'cryptography', 'fastapi', 'starlette', 'uvicorn', 'jinja2'))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_validity_window_lets_a_person_in_and_out(site, tmp_path, recognizer, faces):
    paths, _ = site
    hub = Hub(paths, recognizer.embedder_id)
    door = Door(paths, tmp_path, recognizer, door="front").online()
    try:
        now = time.time()
        hub.put(hub.record("p-late", "late", faces["amy"], valid_from=now + 3))
        hub.put(hub.record("p-gone", "gone", faces["penny"], valid_until=now - 1))
        hub.put(hub.record("p-brief", "brief", faces["penny"][:1], valid_until=now + 3))
        assert door.wait(lambda: "brief" in door.people())
        assert not {"late", "gone"} & set(door.people())
        # the sweep (every 5 s) lets "late" in and "brief" out as their windows open and close
        assert door.wait(lambda: "late" in door.people() and "brief" not in door.people(), 15)
        assert "gone" not in door.people()
    finally:
        door.close()
        w = hub.w
        for pid in ("p-late", "p-gone", "p-brief"):
            w.client.publish(gallery_topic("office", pid), b"", qos=1, retain=True).wait_for_publish(5)
        hub.close()


def test_edgeface_hub_cli_init_site_and_passwd(tmp_path):
    import subprocess
    import sys

    def hub_cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "edgeface.device.site.hub.cli", *args], input=stdin,
                              capture_output=True, text=True, timeout=120)

    r = hub_cli("init-site", "--site", "office", "--doors", "front,hub", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and r.stderr.strip().startswith("edgeface-hub: error: bad site or door name 'hub'")
    r = hub_cli("init-site", "--site", "office", "--doors", "front,back", "--host", "hub.lan", "--out",
                str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    s = tmp_path / "s"
    for f in ("broker/mosquitto.conf", "broker/passwd", "broker/acl", "broker/ca.crt", "broker/broker.crt",
              "hub/hub.json", "hub/hub_signing_key.pem", "doors/front/site.toml", "doors/back/hub_public_key.pem",
              "doors/back/ca.crt", "doors/back/password"):
        assert (s / f).is_file(), f
    assert not (s / "doors/front/hub_signing_key.pem").exists() and not (s / "doors/front/ca.key").exists()
    passwd = (s / "broker/passwd").read_text()
    assert {line.split(":")[0] for line in passwd.split()} == {"hub", "homeassistant", "front", "back"}
    assert (s / "doors/front/password").read_text() not in passwd  # hashed, not stored in clear
    assert (s / "broker/passwd").stat().st_mode & 0o077 == 0
    cert = subprocess.run(["openssl", "x509", "-in", str(s / "broker/broker.crt"), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    assert "DNS:hub.lan" in cert
    from edgeface.device.config import load
    cfg = load(s / "doors/front/site.toml")
    assert cfg.site.enabled and cfg.site.door_id == "front" and cfg.site.host == "hub.lan"
    assert hub_cli("passwd", "--hub", str(s / "hub"), stdin="short\n").returncode == 1
    assert hub_cli("passwd", "--hub", str(s / "hub"), stdin="a long enough password\n").returncode == 0
    from edgeface.device.site.hub.web import check_password
    stored = (s / "hub/admin_password").read_text()
    assert check_password("a long enough password", stored) and not check_password("wrong", stored)
    assert "init-site" in hub_cli("--help").stdout


def test_sync_burst_rename_then_tombstone_erases_every_name(tmp_path, recognizer, faces):
    """Records applied in one burst (one commit) still remember every name a person had."""
    from edgeface import Gallery
    from edgeface.device.events import EventLog
    from edgeface.device.site.outbox import Outbox
    from edgeface.device.site.records import PersonRecord, encode_vectors
    from edgeface.device.site.sync import GallerySync

    space = recognizer.embedder_id
    ev = EventLog(tmp_path / "e.db", snapshot_dir=tmp_path / "snaps")
    outbox = Outbox(str(tmp_path / "e.db"), "front", space)  # unsent copies of the events: erased with them
    outbox.attach(ev)
    with Gallery(tmp_path / "g.db", space, recognizer.embedder.dim) as g:
        sync = GallerySync(g, str(tmp_path / "e.db"))
        emb = {space: encode_vectors(faces["amy"])}
        assert sync.apply(PersonRecord("office", "p1", "Amy", 1, False, None, None, emb)) == "enrolled"
        ev.log("access", identity="Amy", decision="grant", snapshot=np.full((8, 8, 3), 7, np.uint8))
        assert sync.apply(PersonRecord("office", "p1", "Amy F", 2, False, None, None, emb)) == "enrolled"
        ev.log("access", identity="Amy F", decision="grant")
        assert sync.apply(PersonRecord("office", "p1", "Amy F", 2, False, None, None, emb)) == "stale"
        assert [p.name for p in g.people()] == ["Amy F"]
        assert outbox.count() == 2
        assert sync.apply(PersonRecord("office", "p1", "Amy F", 3, True, None, None, {})) == "erased"
        assert len(g) == 0 and not ev.events(kind="access") and not list((tmp_path / "snaps").iterdir())
        assert outbox.count() == 0
        assert sync.version == 3
        sync.close()
    outbox.close()
    ev.close()


def test_sync_apply_many_one_burst_bad_record_refused_alone(tmp_path, recognizer, faces):
    """A burst is one gallery transaction; a record with a wrong embedding size or a bad name is refused alone."""
    from edgeface import Gallery
    from edgeface.device.site.records import PersonRecord, RecordError, encode_vectors
    from edgeface.device.site.sync import GallerySync

    space, dim = recognizer.embedder_id, recognizer.embedder.dim
    emb = {space: encode_vectors(faces["amy"])}
    with Gallery(tmp_path / "g.db", space, dim) as g:
        sync = GallerySync(g)
        recs = [PersonRecord("office", "p1", "Amy", 1, False, None, None, emb),
                PersonRecord("office", "p2", "Bad", 2, False, None, None, {space: encode_vectors(np.ones(dim + 1))}),
                PersonRecord("office", "p3", "Eve\x1b[2J", 3, False, None, None, emb),
                PersonRecord("office", "p1", "Amy B", 4, False, None, None, emb),  # renamed in the same burst
                PersonRecord("office", "p4", "Bo", 5, False, None, None, emb),
                PersonRecord("office", "p4", "Bo", 5, False, None, None, emb)]
        out = sync.apply_many(recs)
        assert out[0] == out[3] == out[4] == "enrolled" and out[5] == "stale"
        assert isinstance(out[1], RecordError) and "embedding of" in str(out[1])
        assert isinstance(out[2], RecordError) and "non-printable" in str(out[2])
        assert [p.name for p in g.people()] == ["Amy B", "Bo"] and sync.version == 5
        assert sync.held("p2") is None and sync.held("p3") is None
        sync.close()


def test_sync_tombstone_leaves_an_old_name_now_held_by_another_person(tmp_path, recognizer, faces):
    """Ada renamed to Ann, then a new person named Ada: erasing Ann leaves the new Ada enrolled; the events
    under "Ada" go (they cannot be told apart: the erasure wins over the audit log)."""
    from edgeface import Gallery
    from edgeface.device.events import EventLog
    from edgeface.device.site.records import PersonRecord, encode_vectors
    from edgeface.device.site.sync import GallerySync

    space = recognizer.embedder_id
    emb = {space: encode_vectors(faces["amy"])}
    with EventLog(tmp_path / "e.db") as ev, Gallery(tmp_path / "g.db", space, recognizer.embedder.dim) as g:
        sync = GallerySync(g, ev)
        assert sync.apply(PersonRecord("office", "p1", "Ada", 1, False, None, None, emb)) == "enrolled"
        ev.log("access", identity="Ada", decision="grant")
        assert sync.apply_many([PersonRecord("office", "p1", "Ann", 2, False, None, None, emb),
                                PersonRecord("office", "p2", "Ada", 3, False, None, None, emb)]) == ["enrolled"] * 2
        ev.log("access", identity="Ann", decision="grant")
        assert sync.apply(PersonRecord("office", "p1", "Ann", 4, True, None, None, {})) == "erased"
        assert [p.name for p in g.people()] == ["Ada"] and not ev.events(kind="access")
        sync.close()


def test_hub_store_dedups_events_drops_forgotten_and_prunes(tmp_path, faces, recognizer):
    from edgeface.device.site.hub.store import HubStore

    st = HubStore(str(tmp_path / "hub.db"), "office")
    pid = st.enroll("Amy", {recognizer.embedder_id: faces["amy"]})
    ev = {"event_id": "e1", "door": "front", "kind": "access", "identity": "Amy", "decision": "grant", "ts": 1.0}
    assert st.add_events([ev, dict(ev)]) == 1 and st.add_events([dict(ev)]) == 0  # dedup by event_id
    assert st.record(pid)["version"] == 1 and st.version == 1
    st.forget(pid)
    assert st.count_events() == 0 and st.record(pid)["deleted"] and st.record(pid)["embeddings"] == {}
    assert st.add_events([dict(ev, event_id="e2")]) == 0  # a late event of a forgotten person is dropped
    assert st.add_events([dict(ev, event_id="e3", identity=None, decision="unknown")]) == 1
    assert st.prune(30, now=time.time() + 31 * 86400) == 1 and st.count_events() == 0
    st.close()


def test_hub_access_window_reaches_the_door(site, tmp_path, recognizer, faces):
    from edgeface.device.site.hub.service import Hub as RealHub
    from edgeface.device.site.hub.service import load_config

    paths, _ = site
    cfg = load_config(paths.hub / "hub.json")
    cfg["database"] = str(tmp_path / "hub.db")
    cfg["client_id"] = "hub-window-test"
    hub = RealHub(cfg, [recognizer]).start()
    door = Door(paths, tmp_path, recognizer, door="back").online()
    try:
        assert hub.wait_connected(10)
        pid = hub.store.enroll("Walt", {recognizer.embedder_id: faces["amy"]})
        hub.publish_person(pid)
        assert door.wait(lambda: "Walt" in door.people())
        hub.set_window(pid, None, time.time() - 60)  # his access ended a minute ago
        assert door.wait(lambda: "Walt" not in door.people())
        hub.set_window(pid, time.time() - 60, None)
        assert door.wait(lambda: "Walt" in door.people())
        with pytest.raises(Exception, match="must be after"):
            hub.set_window(pid, 100.0, 50.0)
        hub.forget(pid)
        hub.flush()
        assert door.wait(lambda: "Walt" not in door.people())
    finally:
        door.close()
        hub.close()
