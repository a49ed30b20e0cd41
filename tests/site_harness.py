"""Helpers for the site tests: a generated site (TLS, password file, ACL) and a real mosquitto on a free
127.0.0.1 port. Missing mosquitto/openssl is an error, never a skip (CI installs them in .ci/run)."""
from __future__ import annotations

import getpass
import json
import logging
import threading
import time

from edgeface.device.site.broker import BrokerProcess, free_port, make_site
from edgeface.device.site.mqtt import BrokerSettings, make_client, start, stop


def new_site(tmp, doors=("front", "back", "side"), site="office"):
    port = free_port()
    paths = make_site(tmp / "site", site, list(doors), host="127.0.0.1", port=port, extra_hosts=["localhost"],
                      run_as=getpass.getuser())
    broker = BrokerProcess(paths.broker / "mosquitto.conf", port).start()
    return paths, broker


def settings(paths, user, password=None, client_id=None):
    return BrokerSettings("127.0.0.1", paths.port, user, paths.passwords[user] if password is None else password,
                          str(paths.broker / "ca.crt"), client_id or f"test-{user}-{time.monotonic_ns()}")



def wait_until(pred, timeout: float = 10.0) -> bool:
    """Poll ``pred`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False

class Watcher:
    """A client that records what it receives on ``topics`` (a list)."""

    def __init__(self, paths, user, topics=(), **kw):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.published = {}

        def on_connect(c):
            for t in topics:
                c.subscribe(t, qos=1)

        def on_message(topic, payload):
            with self.lock:
                self.messages.append((topic, payload))

        def on_publish(mid, ok, reason):
            self.published[mid] = (ok, reason)

        self.client, self.state = make_client(settings(paths, user, **kw), f"watcher {user}", on_connect=on_connect,
                                              on_message=on_message, on_publish=on_publish)
        start(self.client)

    def wait_connected(self, timeout=10):
        assert self.state.connected.wait(timeout), f"not connected: {self.state.last_error}"
        time.sleep(0.2)  # subscriptions
        return self

    def json(self, topic_part=""):
        with self.lock:
            return [json.loads(p) for t, p in self.messages if topic_part in t and p]

    def wait_for(self, pred, timeout=10.0):
        return wait_until(pred, timeout)

    def close(self):
        stop(self.client)


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def having(self, text):
        return [line for line in self.lines if text in line]
