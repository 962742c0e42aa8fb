"""glow.visualize: the motion-field picture and summary shown by the app (DESIGN.md motion encoding)."""
import math

import numpy as np
import pytest
from PIL import Image

from glow.data.kernels import linear_kernel
from glow.data.motion import kernel_to_motion
from glow.visualize import describe_motion_field, draw_motion_field, motion_to_color


def _uniform_field(width, height, theta, directionality, length):
    h, w = math.ceil(height / 8), math.ceil(width / 8)
    field = np.zeros((3, h, w), np.float32)
    field[0] = directionality * math.cos(2 * theta)
    field[1] = directionality * math.sin(2 * theta)
    field[2] = length
    return field


def _white(image, x, y):
    return all(c > 240 for c in image.getpixel((int(x), int(y))))


@pytest.mark.parametrize("theta, along, across", [(0.0, (1, 0), (0, 1)), (math.pi / 2, (0, 1), (1, 0))])
def test_streaks_are_drawn_along_the_blur_direction(theta, along, across):
    grey = Image.new("RGB", (192, 128), (128, 128, 128))
    picture = draw_motion_field(grey, _uniform_field(192, 128, theta, 1.0, 20.0), max_marks=6, legend=False)
    assert picture.size == grey.size
    cell = 32  # 192 px / 6 marks
    cx, cy = cell / 2, cell / 2
    # 8 px from the centre along the streak is on the line; 8 px across it is not
    assert _white(picture, cx + 8 * along[0], cy + 8 * along[1])
    assert not _white(picture, cx + 8 * across[0], cy + 8 * across[1])
    # ...and the line has its true length (20 px): nothing white 14 px out along it
    assert not _white(picture, cx + 14 * along[0], cy + 14 * along[1])


def test_isotropic_blur_is_a_circle_of_its_length():
    grey = Image.new("RGB", (128, 128), (128, 128, 128))
    picture = draw_motion_field(grey, _uniform_field(128, 128, 0.0, 0.0, 20.0), max_marks=4, legend=False)
    cx = cy = 16
    assert _white(picture, cx + 10, cy) and _white(picture, cx, cy - 10)  # on the ring (radius 10)
    assert not _white(picture, cx, cy) and not _white(picture, cx + 5, cy)  # inside it


def test_field_from_a_real_kernel_and_preview_scaling():
    # A horizontal 15-px line PSF, encoded by the data engine, drawn on a half-size preview.
    motion_vec = kernel_to_motion(linear_kernel(15.0, 0.0))
    assert motion_vec[2] == pytest.approx(15.0, rel=0.2) and motion_vec[0] > 0.9  # horizontal, ~15 px
    field = motion_vec.view(3, 1, 1).expand(3, 16, 24).numpy()
    preview = Image.new("RGB", (96, 64), (100, 100, 100))
    picture = draw_motion_field(preview, field, source_size=(192, 128), max_marks=3, legend=False)
    assert picture.size == (96, 64)
    cell = 32  # 8 motion patches * 8 px * scale 0.5
    assert _white(picture, cell / 2 + 3, cell / 2) and not _white(picture, cell / 2, cell / 2 + 3)


def test_colour_wheel_and_description():
    horizontal = _uniform_field(64, 64, 0.0, 1.0, 9.0)
    vertical = _uniform_field(64, 64, math.pi / 2, 1.0, 9.0)
    assert not np.array_equal(motion_to_color(horizontal), motion_to_color(vertical))
    assert (motion_to_color(_uniform_field(64, 64, 0.3, 0.0, 9.0)) == 255).all()  # no direction: white (no tint)
    text = describe_motion_field(_uniform_field(64, 64, math.radians(30), 0.9, 9.0))
    assert "9.0 px" in text and "directional" in text and "30°" in text
    assert "defocus-like" in describe_motion_field(_uniform_field(64, 64, 0.0, 0.05, 6.0))
    left_right = np.concatenate([horizontal, vertical], axis=2)
    assert "varies across the image" in describe_motion_field(left_right)
    with pytest.raises(ValueError, match="shape"):
        draw_motion_field(Image.new("RGB", (8, 8)), np.zeros((2, 1, 1)))


def test_kernel_inset_shows_the_kernel_in_the_corner():
    """A horizontal streak kernel is drawn bottom-left as a horizontal white bar; the rest of the picture is the
    same as without it."""
    grey = Image.new("RGB", (200, 150), (128, 128, 128))
    field = _uniform_field(200, 150, 0.0, 1.0, 15.0)
    kernel = linear_kernel(15.0, 0.0)
    with_inset = np.asarray(draw_motion_field(grey, field, kernel=kernel, legend=False), np.int16)
    without = np.asarray(draw_motion_field(grey, field, legend=False), np.int16)
    side = 150 // 5
    changed = np.nonzero(np.abs(with_inset - without).sum(-1) > 0)
    assert changed[0].min() >= 150 - side - 2 * 4 and changed[1].max() <= side + 2 * 4  # only the corner
    inset = with_inset[150 - side - 4 : 150 - 4, 4 : side + 4].mean(-1)  # margin 4 px, inside the frame
    bright_rows = np.nonzero((inset > 200).sum(1) > side // 2)[0]
    bright_cols = np.nonzero((inset > 200).sum(0) > side // 2)[0]
    assert len(bright_rows) > 0 and len(bright_cols) == 0  # a horizontal bar, not a vertical one
