"""The door relay through gpiozero, fail secure.

The relay is energized only while the door is unlocked: created locked, locked again after
``unlock_seconds`` (by a timer thread, so a stalled loop cannot hold the door open), locked at once on any
error or when the camera is lost, and locked on close. gpiozero is imported lazily; its mock pin factory
(``pin_factory = "mock"``) drives a simulated pin for dry runs and tests.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from edgeface.errors import EdgefaceError

log = logging.getLogger(__name__)


class DoorError(EdgefaceError, RuntimeError):
    """The relay could not be set up (gpiozero missing, pin busy, no GPIO)."""


def make_pin_factory(name: str):
    """A gpiozero pin factory: ``"mock"`` (simulated pins) or ``"native"`` (gpiozero's default, None)."""
    if name == "native":
        return None
    if name == "mock":
        try:
            from gpiozero.pins.mock import MockFactory
        except ImportError as exc:
            raise DoorError("the door needs gpiozero: pip install 'edgeface[door]'") from exc
        return MockFactory()
    raise ValueError(f"unknown pin factory {name!r}")


class DoorController:
    """Drives one relay.

    Args:
      cfg: :class:`edgeface.device.config.DoorConfig`.
      clock: time source (seconds). The loop passes frame times to :meth:`grant` / :meth:`update`; with the
        default monotonic clock a timer also relocks on time without the loop.
      pin_factory: a gpiozero pin factory object (overrides ``cfg.pin_factory``).
      relock_timer: relock by a timer thread (on for live cameras; off when time is a video's clock).
    """

    def __init__(self, cfg, clock: Callable[[], float] = time.monotonic, pin_factory=None,
                 relock_timer: bool = True):
        self.cfg = cfg
        self.clock = clock
        self.relock_timer = relock_timer
        self._lock = threading.RLock()
        self._timer: Optional[threading.Timer] = None
        self.unlocked_until: Optional[float] = None
        self.cooldown_until = -float("inf")
        self.unlock_count = 0
        self.device = None
        self.pin_factory = None
        if not cfg.enabled:
            log.info("door relay disabled: decisions are only reported")
            return
        try:
            from gpiozero import OutputDevice
        except ImportError as exc:
            raise DoorError("the door relay needs gpiozero: pip install 'edgeface[door]' (or set "
                            "[door] enabled = false)") from exc
        self.pin_factory = pin_factory if pin_factory is not None else make_pin_factory(cfg.pin_factory)
        try:
            self.device = OutputDevice(cfg.gpio_pin, active_high=cfg.active_high, initial_value=False,
                                       pin_factory=self.pin_factory)
        except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, PinInUse...)
            raise DoorError(f"cannot drive GPIO{cfg.gpio_pin}: {exc}") from exc
        log.info("door relay on GPIO%d (%s), locked", cfg.gpio_pin,
                 "active high" if cfg.active_high else "active low")

    @property
    def locked(self) -> bool:
        return self.unlocked_until is None

    @property
    def relay_energized(self) -> bool:
        """What the relay really does now (False without a relay)."""
        return bool(self.device is not None and self.device.value)

    def grant(self, now: Optional[float] = None, who: str = "", audit: Optional[Callable[[], object]] = None) -> bool:
        """Unlock for ``unlock_seconds``. Returns False (door stays locked) during the cooldown or on a relay error.

        ``audit`` is called once the grant is certain (not in the cooldown) and before the relay moves, under the
        door's lock: the loop commits the access event there. If it raises, the door stays as it was (locked, or
        its current unlock not extended) and the exception propagates.
        """
        now = self.clock() if now is None else now
        with self._lock:
            self.update(now)
            if self.unlocked_until is not None:  # already open: extend
                if audit is not None:
                    audit()
                self.unlocked_until = now + self.cfg.unlock_seconds
                self._arm_timer()
                return True
            if now < self.cooldown_until:
                log.info("grant for %s ignored: cooldown for %.1f s more", who, self.cooldown_until - now)
                return False
            if audit is not None:
                audit()
            try:
                if self.device is not None:
                    self.device.on()
            except Exception as exc:  # noqa: BLE001 - fail secure
                log.error("relay failed while unlocking: %s", exc)
                self.lock("relay error")
                return False
            self.unlocked_until = now + self.cfg.unlock_seconds
            self.unlock_count += 1
            self._arm_timer()
            log.info("door unlocked for %s (%.1f s)", who or "?", self.cfg.unlock_seconds)
            return True

    def _arm_timer(self) -> None:
        if not self.relock_timer:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.cfg.unlock_seconds, self._timer_fired)
        self._timer.daemon = True
        self._timer.start()

    def _timer_fired(self) -> None:
        with self._lock:
            if self.unlocked_until is not None:
                self.lock("unlock time over")

    def update(self, now: Optional[float] = None) -> None:
        """Relock when the unlock time is over (call every frame)."""
        now = self.clock() if now is None else now
        with self._lock:
            if self.unlocked_until is not None and now >= self.unlocked_until:
                self.lock("unlock time over", now)

    def lock(self, reason: str = "", now: Optional[float] = None) -> None:
        """Lock now (fail secure: called on every error). Never raises."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            was_open = self.unlocked_until is not None
            self.unlocked_until = None
            if was_open:
                t = self.clock() if now is None else now
                self.cooldown_until = t + self.cfg.cooldown_seconds
                log.info("door locked (%s)", reason or "lock")
            try:
                if self.device is not None:
                    self.device.off()
            except Exception as exc:  # noqa: BLE001 - switching the relay off must never raise
                log.critical("relay did not switch off (%s): check the wiring, the door may be open", exc)

    def close(self) -> None:
        self.lock("shutdown")
        if self.device is not None:
            try:
                self.device.close()
            except Exception:
                log.debug("relay close failed", exc_info=True)
            self.device = None

    def __enter__(self) -> "DoorController":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
