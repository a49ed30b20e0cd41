"""One recipe for a paho-mqtt 2.x client (MQTT v5, TLS, user/password, last will), shared by door and hub.

paho-mqtt is imported here, lazily: ``import edgeface.device.site`` costs nothing when the site is not used.
The client reconnects by itself (paho's ``loop_start`` thread, backoff 1 s .. ``max_backoff``); a refused
connection (wrong password, TLS failure) is logged once per distinct reason, not on every retry.
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Callable, NamedTuple, Optional

from . import SiteError

log = logging.getLogger(__name__)


class BrokerSettings(NamedTuple):
    host: str
    port: int
    username: str
    password: str
    ca_file: str = ""          #: TLS when set: the site CA that signed the broker's certificate
    client_id: str = ""
    keepalive: int = 30


def paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise SiteError("the site link needs paho-mqtt 2.x: pip install 'edgeface[site]'") from exc
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise SiteError("paho-mqtt 2.x is required (found 1.x: pip install -U 'paho-mqtt>=2')")
    return mqtt


class LinkState:
    """What the link knows about the broker: connected or not, and the last refusal (logged once)."""

    def __init__(self, name: str):
        self.name = name
        self.connected = threading.Event()
        self.last_error: Optional[str] = None
        self.connects = 0
        self._reported: set = set()

    def refused(self, reason: str) -> None:
        """Logged once per distinct reason until the next successful connect."""
        if reason not in self._reported:
            self._reported.add(reason)
            log.error("%s: broker refused the connection: %s", self.name, reason)
        self.last_error = reason


def make_client(settings: BrokerSettings, name: str, will: Optional[tuple[str, bytes]] = None,
                persistent_session: bool = False, on_connect: Optional[Callable] = None,
                on_message: Optional[Callable] = None, on_publish: Optional[Callable] = None,
                max_backoff: float = 10.0, max_inflight: int = 100):
    """A configured (not yet connected) paho client and its :class:`LinkState`.

    ``on_connect(client)`` runs on every successful (re)connect: subscribe and (re)publish there.
    ``on_message(topic, payload)``; ``on_publish(mid, ok, reason)``. ``persistent_session``: the broker keeps
    our subscriptions and queues QoS 1 messages while we are away (the hub, for events).
    """
    mqtt = paho()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    state = LinkState(name)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id or name,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(settings.username, settings.password)
    if settings.ca_file:
        try:
            client.tls_set(ca_certs=settings.ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError) as exc:
            raise SiteError(f"cannot use CA file {settings.ca_file}: {exc}") from exc
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(1, max(1, int(max_backoff)))
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    props = None
    if persistent_session:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 7 * 86400

    def _on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            state.refused(str(reason_code))
            return
        if state.last_error or state.connects:
            log.info("%s: connected to %s:%d", name, settings.host, settings.port)
        state.last_error = None
        state._reported.clear()
        state.connects += 1
        state.connected.set()
        if on_connect is not None:
            on_connect(c)

    def _on_disconnect(c, userdata, flags, reason_code, properties):
        was = state.connected.is_set()
        state.connected.clear()
        if was and not getattr(c, "_edgeface_stopping", False):  # (refusals: reported by _on_connect)
            log.warning("%s: disconnected from the broker (%s); retrying", name, reason_code)

    def _on_connect_fail(c, userdata):
        state.refused(f"cannot reach {settings.host}:{settings.port}")

    client.on_connect = _on_connect
    client.on_disconnect = _on_disconnect
    client.on_connect_fail = _on_connect_fail
    if on_message is not None:
        client.on_message = lambda c, u, msg: on_message(msg.topic, msg.payload)
    if on_publish is not None:
        client.on_publish = lambda c, u, mid, reason_code, properties: on_publish(
            mid, not reason_code.is_failure, str(reason_code))
    client._edgeface_connect = lambda: client.connect_async(  # noqa: SLF001 - kept with the client
        settings.host, settings.port, settings.keepalive, clean_start=not persistent_session, properties=props)
    return client, state


def start(client) -> None:
    """Connect in the background and keep reconnecting (paho's network thread)."""
    client._edgeface_connect()  # noqa: SLF001
    client.loop_start()


def stop(client, final: Optional[tuple[str, bytes]] = None) -> None:
    """Publish ``final`` (topic, payload: retained, e.g. offline) if connected, then disconnect."""
    client._edgeface_stopping = True  # noqa: SLF001 - our own disconnect is not worth a warning
    try:
        if final is not None and client.is_connected():
            client.publish(final[0], final[1], qos=1, retain=True).wait_for_publish(2.0)
    except (RuntimeError, ValueError):
        pass
    client.disconnect()
    client.loop_stop()
