"""Pre-processing functions (synthetic arrays; real photos where OpenCV is matched) and image-reading error paths."""
import cv2
import numpy as np
import pytest

from edgeface import preprocess
from edgeface.runtime import dequantize, quantize


def test_letterbox_roundtrip_maps_points_back():
    img = np.zeros((100, 200, 3), np.uint8)
    canvas, lb = preprocess.letterbox(img, 128)
    assert canvas.shape == (128, 128, 3)
    assert lb.scale == pytest.approx(0.64) and lb.pad_x == 0 and lb.pad_y == 32
    # image corner (200, 100) -> canvas (128, 96) -> normalized -> back
    pts = np.array([[128 / 128, 96 / 128], [0, 32 / 128]])
    back = preprocess.unletterbox(pts, lb)
    assert np.allclose(back, [[200, 100], [0, 0]], atol=1e-3)


def test_to_rgb_handles_gray_alpha_bgr_and_16bit():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    assert preprocess.to_rgb(bgr, "bgr")[0, 0].tolist() == [0, 0, 255]
    assert preprocess.to_rgb(np.full((4, 5), 7, np.uint8)).shape == (4, 5, 3)
    assert preprocess.to_rgb(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert preprocess.to_rgb(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    with pytest.raises(ValueError):
        preprocess.to_rgb(np.zeros((0, 0, 3), np.uint8))


def test_read_image_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path, reason in ((empty, "empty"), (text, "not a readable image"), (tmp_path / "missing.png", "cannot")):
        with pytest.raises(preprocess.ImageError, match=reason) as err:
            preprocess.read_image(path)
        assert str(path) in str(err.value)


def test_read_image_rejects_decompression_bomb_header(tmp_path):
    small = np.zeros((8, 8, 3), np.uint8)
    ok, buf = cv2.imencode(".png", small)
    data = bytearray(buf.tobytes())
    data[16:20] = (60000).to_bytes(4, "big")  # claim 60000 x 60000 in the IHDR
    data[20:24] = (60000).to_bytes(4, "big")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(preprocess.ImageError, match="pixels"):
        preprocess.read_image(bomb)


def test_read_image_grayscale_and_alpha_png(tmp_path):
    gray = tmp_path / "g.png"
    cv2.imwrite(str(gray), np.full((10, 12), 100, np.uint8))
    rgba = tmp_path / "a.png"
    cv2.imwrite(str(rgba), np.dstack([np.full((10, 12, 3), 50, np.uint8), np.full((10, 12), 128, np.uint8)]))
    assert preprocess.read_image(gray).shape == (10, 12, 3)
    assert preprocess.read_image(rgba).shape == (10, 12, 3)


def test_crop_box_is_square_and_pads_outside():
    img = np.full((50, 50, 3), 200, np.uint8)
    crop = preprocess.crop_box(img, [30, 30, 60, 60], 20, margin=0.0)  # box runs off the image
    assert crop.shape == (20, 20, 3)
    assert crop[0, 0].tolist() == [200, 200, 200] and crop[-1, -1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="degenerate"):
        preprocess.crop_box(img, [10, 10, 10, 20], 20)


def test_square_box_margin():
    assert np.allclose(preprocess.square_box([0, 0, 10, 20], 0.5), [-10, -5, 20, 25])


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + t
    m = preprocess.similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot, atol=1e-4) and np.allclose(m[:, 2], t, atol=1e-3)


def test_normalize_and_quantize_roundtrip():
    x = preprocess.normalize(np.array([[0, 127.5, 255]], np.float32), 127.5, 127.5)
    assert np.allclose(x, [[-1, 0, 1]])
    q = quantize(np.array([-2.0, -0.5, 0.0, 0.5, 2.0]), 0.01, 3, np.int8)
    assert q.tolist() == [-128, -47, 3, 53, 127]  # zero point applied, saturates at the int8 limits
    assert np.allclose(dequantize(q, 0.01, 3), [-1.31, -0.5, 0, 0.5, 1.24])
    assert quantize(np.array([-1.0, 0.0, 3.0]), 0.5, 128, np.uint8).tolist() == [126, 128, 134]
    with pytest.raises(ValueError):
        preprocess.normalize(x, 0, 0)


def test_crop_rect_stretches_and_shifts():
    img = np.zeros((200, 200, 3), np.uint8)
    img[:100] = 255  # top half white
    # a 40-px-wide box centred at (100, 100); rectangle 1 box wide, 2 boxes tall, shifted up by half a box
    crop = preprocess.crop_rect(img, [80, 80, 120, 120], 1.0, 2.0, -0.5, 40)
    assert crop.shape == (40, 40, 3)
    # covers y in [40, 120]: rows above y=100 are white, 3/4 of the crop
    assert crop[:, :, 0].mean() == pytest.approx(255 * 0.75, abs=8)
    with pytest.raises(ValueError):
        preprocess.crop_rect(img, [80, 80, 80, 120], 1, 1, 0, 40)


def test_enhance_brightens_dark_images_and_names_bad_input():
    from edgeface.preprocess import ENHANCEMENTS, enhance

    rng = np.random.default_rng(5)
    dark = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
    assert enhance(dark, "none") is dark
    for method in ENHANCEMENTS[1:]:
        out = enhance(dark, method)
        assert out.shape == dark.shape and out.dtype == np.uint8 and out.mean() > dark.mean() + 20, method
    with pytest.raises(ValueError, match="sharpen"):
        enhance(dark, "sharpen")
    with pytest.raises(ValueError, match="RGB uint8"):
        enhance(dark.astype(np.float32), "equalize")


def test_opencv_log_level_on_opencv_4_and_5():
    """OpenCV 5 keeps the log level in cv2.utils.logging; the [device-legacy] extra's OpenCV 4.11 has only
    cv2.getLogLevel / cv2.setLogLevel (read_image raised AttributeError on it before)."""
    import types

    from edgeface.preprocess import opencv_log_level

    calls = []
    cv4 = types.SimpleNamespace(utils=types.SimpleNamespace(), getLogLevel=lambda: 3, setLogLevel=calls.append)
    get, put = opencv_log_level(cv4)
    put(0)
    assert get() == 3 and calls == [0]
    logging = types.SimpleNamespace(getLogLevel=lambda: 4, setLogLevel=calls.append)
    cv5 = types.SimpleNamespace(utils=types.SimpleNamespace(logging=logging))
    get, put = opencv_log_level(cv5)
    put(1)
    assert get() == 4 and calls == [0, 1]



def test_resize_area_is_opencv_inter_area_bit_for_bit_on_real_photos():
    """The float32 route of resize_area gives OpenCV's uint8 INTER_AREA result exactly: real LFW photos, as
    they are and as camera-sized frames, to the detectors' and O-Net's sizes (general shrinks), integer
    shrinks and enlargements (handed to OpenCV)."""
    import cv2

    from conftest import lfw_image

    photos = [preprocess.read_image(lfw_image(n, i)) for n, i in
              (("Colin_Powell", 1), ("Serena_Williams", 4), ("Tony_Blair", 7), ("Gloria_Macapagal_Arroyo", 2))]
    sizes = [(192, 192), (128, 128), (48, 48), (192, 144), (128, 96), (125, 125), (500, 500), (250, 125)]
    general = 0
    for photo in photos:
        for src in (photo, cv2.resize(photo, (640, 480)), cv2.resize(photo, (333, 517)), photo[:61, :47]):
            for w, h in sizes:
                expected = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
                got = preprocess.resize_area(src, w, h)
                assert got.dtype == np.uint8 and np.array_equal(got, expected), (src.shape, w, h)
                general += bool(preprocess._general_area(src.shape[1], w) and
                                preprocess._general_area(src.shape[0], h) is not None)
    assert general >= 40  # most cases took the float32 route
    assert preprocess._general_area(250, 125) is False and preprocess._general_area(250, 192) is True
    assert preprocess._general_area(100, 300) is None
