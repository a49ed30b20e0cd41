"""Coral kiosk mode: the same loop with an on-screen overlay when a display exists, headless otherwise.

The Edge TPU is chosen in ``[models] accelerator = "edgetpu"`` (see :func:`edgeface.device.app.load_recognizer`:
delegated node counts are logged; CPU fallback only with ``allow_cpu_fallback = true``).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import cv2
import numpy as np

from .app import StartupError, has_display

log = logging.getLogger(__name__)

COLORS = {"grant": (0, 200, 0), "unknown": (0, 0, 230), "spoof": (0, 0, 230), "pending": (0, 200, 230)}


def draw_overlay(image_rgb: Optional[np.ndarray], loop, fps: float = 0.0, size=(480, 640)) -> np.ndarray:
    """A BGR image of the frame with each track's box and label, the door state and the frame rate."""
    if image_rgb is None:
        canvas = np.zeros((size[0], size[1], 3), np.uint8)
        cv2.putText(canvas, "camera lost - door locked", (20, size[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8,
                    (0, 0, 255), 2)
        return canvas
    canvas = np.ascontiguousarray(image_rgb[:, :, ::-1])
    for track, st in loop.last_faces:
        x1, y1, x2, y2 = [int(v) for v in track.box]
        granted = st.decided and st.confirmed is not None and not st.label.endswith("liveness")
        key = "grant" if granted else ("unknown" if st.reported_unknown or st.decided else "pending")
        color = COLORS[key]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        cv2.putText(canvas, f"#{track.id} {st.label}", (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    color, 1)
    door = loop.door
    state = "no relay" if door is None else ("UNLOCKED" if not door.locked else "locked")
    cv2.putText(canvas, f"door: {state}  {fps:.1f} fps", (8, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, (255, 255, 255), 1)
    return canvas


class KioskDisplay:
    """``on_frame`` callback for :meth:`FaceLoop.run`: draws the overlay in a window, or nothing headless."""

    def __init__(self, mode: str = "auto", title: str = "edgeface"):
        self.title = title
        if mode == "off":
            self.enabled = False
        elif mode == "on":
            if not has_display():
                raise StartupError("[kiosk] display = \"on\" but there is no display or the OpenCV build has no GUI "
                                   "(opencv-python-headless); use display = \"auto\" to run headless")
            self.enabled = True
        else:
            self.enabled = has_display()
        log.info("kiosk: %s", "overlay window" if self.enabled else "headless (no display)")
        self._last = time.monotonic()
        self.fps = 0.0
        self.quit = False

    def __call__(self, frame, loop, decisions) -> None:
        now = time.monotonic()
        dt, self._last = now - self._last, now
        if dt > 0:
            self.fps = 0.9 * self.fps + 0.1 / dt if self.fps else 1.0 / dt
        if not self.enabled:
            return
        image = draw_overlay(None if frame is None else frame.image, loop, self.fps)
        cv2.imshow(self.title, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit = True

    def close(self) -> None:
        if self.enabled:
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass
