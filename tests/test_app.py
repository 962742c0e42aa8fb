"""The web app, end to end: `python app.py` on a free port with a tiny random pipeline, driven through
gradio_client (the documented /deblur API, the API snippet of docs/app.md) and, with the `browser` marker, headless Chromium.

Decisions checked here (also in docs/app.md):
- not an image, empty, truncated, too small (< 16 px), too large (> GLOW_MAX_MEGAPIXELS), no upload -> readable error;
- 16-bit PNG (gray and colour, deblurred at full precision), CMYK JPEG, animated GIF (first frame), EXIF rotation,
  RGBA (alpha kept in the PNG download), grayscale (grayscale download) -> deblurred;
- a missing model, invalid settings, an upload over the size limit -> readable error, and the app stays up;
- after every error the next request still works.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

MAX_MP = 0.5  # the test server's upload cap (GLOW_MAX_MEGAPIXELS), so "too large" needs only a small file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"app did not serve within {timeout} s:\n{log.read_text()[-4000:]}")


class _AppServer:
    """`python app.py` on a free port (the real app in its own process, as users and Spaces run it)."""

    def __init__(self, log: Path, **settings):
        port = _free_port()
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
               "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "False", **settings}
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}/"
        try:
            _wait_until_serving(self.url, self.proc, log)
        except BaseException:
            self.stop()
            raise

    def check_alive(self):
        assert self.proc.poll() is None, f"the app died:\n{self.log.read_text(errors='replace')[-4000:]}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from glow.presets import build_pipeline

    model_dir = tmp_path_factory.mktemp("tiny_model")
    build_pipeline("tiny").save_pretrained(model_dir)
    server = _AppServer(tmp_path_factory.mktemp("app_log") / "app.log", GLOW_MODEL=str(model_dir),
                        GLOW_MAX_MEGAPIXELS=str(MAX_MP), GLOW_MAX_UPLOAD_MB="1")
    try:
        yield server.url
        server.check_alive()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _blurry(width=96, height=72, seed=0) -> Image.Image:
    """A small photo-like test image (smooth shapes + texture), blurred horizontally."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / 7 + c) * np.cos(yy / 9 - c) for c in range(3)], axis=-1)
    img += 0.05 * rng.standard_normal(img.shape)
    kernel = np.ones(7) / 7
    img = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, img)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def _deblur(client, path, prompt="", fidelity=0.5, steps=1, seed=0, tile_size=0, tile_overlap=64, guidance_scale=1.0,
            deconvolve=True, networks="auto"):
    from gradio_client import handle_file

    image = handle_file(str(path)) if path is not None else None
    return client.predict(image=image, prompt=prompt, fidelity=fidelity, steps=steps, seed=seed, tile_size=tile_size,
                          tile_overlap=tile_overlap, guidance_scale=guidance_scale, deconvolve=deconvolve,
                          networks=networks, api_name="/deblur")


def _check_good(client, tmp_path, size=(80, 64)):
    path = tmp_path / "good.png"
    _blurry(*size).save(path)
    pair, overlay, prerecon, png, report = _deblur(client, path)
    assert Image.open(png).size == size and "done in" in report


def test_deblur_through_client(client, tmp_path):
    src = tmp_path / "photo.jpg"
    _blurry(120, 88).save(src, quality=95)
    pair, overlay, prerecon, png, report = _deblur(client, src, prompt="a wavy pattern", steps=2, guidance_scale=2.0)

    before, after = (Image.open(p) for p in pair)
    assert before.size == after.size == (120, 88)
    assert Image.open(overlay).size == (120, 88)
    assert Image.open(prerecon).size == (120, 88)
    download = Image.open(png)
    assert download.format == "PNG" and download.mode == "RGB" and download.size == (120, 88)
    assert Path(png).name == "photo_deblurred.png"
    assert "120x88" in report and "2 step(s)" in report and "a wavy pattern" in report and "text guidance 2" in report
    assert "Estimated motion: blur length" in report
    # The motion-field picture is drawn over the photo, so it is not the photo itself.
    assert np.abs(np.asarray(Image.open(overlay).convert("RGB"), np.float32)
                  - np.asarray(before.convert("RGB"), np.float32)).mean() > 5


def test_ui_defaults_match_the_pipeline(client):
    import inspect

    from glow import GLOWDeblurPipeline

    defaults = inspect.signature(GLOWDeblurPipeline.__call__).parameters
    params = {p["parameter_name"]: p for p in client.view_api(print_info=False, return_format="dict")
              ["named_endpoints"]["/deblur"]["parameters"]}
    assert params["steps"]["parameter_default"] == defaults["num_inference_steps"].default
    assert params["fidelity"]["parameter_default"] == defaults["fidelity"].default
    assert params["guidance_scale"]["parameter_default"] == defaults["guidance_scale"].default
    assert params["deconvolve"]["parameter_default"] == defaults["deconvolve"].default
    assert params["networks"]["parameter_default"] == defaults["networks"].default
    assert not params["image"]["parameter_has_default"]
    assert all(p["parameter_has_default"] for name, p in params.items() if name != "image")


def test_app_tile_grid_is_the_pipelines():
    from glow.pipeline_glowdeblur import PAD_MULTIPLE

    source = (ROOT / "app.py").read_text()  # read, not imported: importing app.py builds the whole UI
    assert f"\nTILE_MULTIPLE = {PAD_MULTIPLE}\n" in source


def test_deconvolve_switch_reaches_the_pipeline(client, tmp_path):
    """The checkbox turns the per-photo kernel estimation off: a streaked photo then comes out differently, and only
    the run with it on draws a kernel inset into the motion map."""
    src = tmp_path / "streaks.png"
    _blurry(256, 192, seed=3).save(src)
    _, overlay_on, _, png_on, _ = _deblur(client, src, fidelity=1.0)
    _, overlay_off, _, png_off, _ = _deblur(client, src, fidelity=1.0, deconvolve=False)
    on, off = (np.asarray(Image.open(p).convert("RGB"), np.float32) for p in (png_on, png_off))
    assert np.abs(on - off).max() > 0
    a, b = (np.asarray(Image.open(p).convert("RGB"), np.float32) for p in (overlay_on, overlay_off))
    h = a.shape[0]
    corner = (slice(h - h // 5 - 8, h), slice(0, h // 5 + 8))
    assert np.abs(a[corner] - b[corner]).max() > 0  # the kernel inset


def test_networks_switch_returns_the_deconvolution_alone(client, tmp_path):
    """Unticking the networks returns the deconvolution alone: a different picture from the default run, and the
    report says so; with both switches off the page gets a readable error and the app stays up."""
    from gradio_client.exceptions import AppError

    src = tmp_path / "streaks.png"
    _blurry(256, 192, seed=3).save(src)
    _, _, _, png_on, _ = _deblur(client, src)
    _, _, _, png_off, report = _deblur(client, src, networks="never")
    on, off = (np.asarray(Image.open(p).convert("RGB"), np.float32) for p in (png_on, png_off))
    assert np.abs(on - off).max() > 0 and "deconvolution only" in report and "step(s)" not in report
    with pytest.raises(AppError, match="nothing to do"):
        _deblur(client, src, deconvolve=False, networks="never")
    _check_good(client, tmp_path)


def test_auto_networks_return_a_sharp_clean_photo_unchanged(client, tmp_path):
    """The default ("auto"): a sharp photo without noise comes back as it was, and the report says why; "always"
    runs the networks on it anyway; a setting that is not a choice is refused."""
    rng = np.random.default_rng(0)  # hard-edged discs and rectangles on a flat background
    img = np.full((192, 256, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:192, 0:256]
    for _ in range(14):
        colour = rng.integers(25, 230, 3)
        y, x, r = rng.integers(0, 192), rng.integers(0, 256), rng.integers(8, 40)
        if rng.random() < 0.5:
            img[max(0, y - r) : y + r, max(0, x - r // 2) : x + r // 2] = colour
        else:
            img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = colour
    src = tmp_path / "sharp.png"
    Image.fromarray(img).save(src)
    # the tiny random model's kernel search is not the shipped one: off here, so only the photo's measures decide
    _, _, _, png, report = _deblur(client, src, deconvolve=False)
    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), img)
    assert "networks were skipped" in report
    _, _, _, png_always, report = _deblur(client, src, deconvolve=False, networks="always")
    assert not np.array_equal(np.asarray(Image.open(png_always).convert("RGB")), img)
    assert "networks were skipped" not in report


def test_fidelity_one_returns_the_prereconstruction(client, tmp_path):
    src = tmp_path / "photo.png"
    _blurry(88, 72, seed=1).save(src)
    _, _, prerecon, png, _ = _deblur(client, src, fidelity=1.0, steps=2, seed=1)
    _, _, _, png_other, _ = _deblur(client, src, fidelity=1.0, steps=4, seed=2)
    # DESIGN.md: fidelity 1 skips the diffusion, so neither the seed nor the steps matter...
    first = np.asarray(Image.open(png).convert("RGB"), np.float32)
    np.testing.assert_array_equal(first, np.asarray(Image.open(png_other).convert("RGB"), np.float32))
    # ...and the download is the pre-reconstruction (shown as lossy WebP on the page, hence the tolerance).
    assert np.abs(first - np.asarray(Image.open(prerecon).convert("RGB"), np.float32)).mean() < 8
    _, _, _, png_detail, _ = _deblur(client, src, fidelity=0.0, steps=2, seed=1)
    assert not np.array_equal(first, np.asarray(Image.open(png_detail).convert("RGB"), np.float32))


def test_same_seed_same_result(client, tmp_path):
    src = tmp_path / "photo.png"
    _blurry(72, 64, seed=2).save(src)
    first = np.asarray(Image.open(_deblur(client, src, fidelity=0.0, seed=7)[3]))
    second = np.asarray(Image.open(_deblur(client, src, fidelity=0.0, seed=7)[3]))
    np.testing.assert_array_equal(first, second)


def test_concurrent_requests_are_queued_and_all_answered(client, tmp_path):
    from gradio_client import handle_file

    jobs = []
    for i, size in enumerate([(96, 64), (64, 96), (80, 80)]):
        path = tmp_path / f"photo{i}.png"
        _blurry(*size, seed=i).save(path)
        jobs.append((size, client.submit(image=handle_file(str(path)), api_name="/deblur")))
    for size, job in jobs:  # one at a time on the server (concurrency 1), none dropped
        assert Image.open(job.result(timeout=120)[3]).size == size


def test_tiling(client, tmp_path):
    src = tmp_path / "small.png"
    _blurry(256, 160).save(src)
    _, _, _, png, report = _deblur(client, src, tile_size=128, tile_overlap=32)  # overlap rounds up to the 64 grid
    assert Image.open(png).size == (256, 160)
    tiles = re.search(r"processed in (\d+) overlapping tiles of at most 128 px", report)
    assert tiles and int(tiles.group(1)) >= 4, report
    _, _, _, png, report = _deblur(client, src, tile_size=0)  # auto: the pipeline's default tile, bigger than this
    assert Image.open(png).size == (256, 160) and "tiles" not in report


# ---------------------------------------------------------------------------------------------------------------
# Bad and unusual uploads
# ---------------------------------------------------------------------------------------------------------------
def _png16(array: np.ndarray, path: Path) -> None:
    """Write a 16-bit RGB PNG by hand (Pillow cannot write 48-bit colour)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


def _make_bad(kind: str, tmp_path: Path) -> Path:
    if kind == "text_as_png":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n" * 20)
    elif kind == "empty":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        full = tmp_path / "full.jpg"
        _blurry(128, 96).save(full, quality=90)
        path = tmp_path / "truncated.jpg"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    elif kind == "one_pixel":
        path = tmp_path / "dot.png"
        Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    elif kind == "too_large":
        path = tmp_path / "huge.png"
        Image.new("RGB", (1000, 600), (90, 90, 90)).save(path)  # 0.6 MP > MAX_MP
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text_as_png", "'notes.png': not a recognised image file"),
        ("empty", "empty"),
        ("truncated_jpeg", "'truncated.jpg': the file is truncated or corrupt"),
        ("one_pixel", "only 1x1 px; GLOWDeblur needs at least 16x16 px"),
        ("too_large", f"1000x600 = 0.6 megapixels; this app accepts up to {MAX_MP:g} MP"),
        ("no_upload", "Please upload a photo first"),
    ],
)
def test_bad_upload_gives_readable_error_then_app_still_works(client, tmp_path, kind, message):
    from gradio_client.exceptions import AppError

    path = None if kind == "no_upload" else _make_bad(kind, tmp_path)
    with pytest.raises(AppError) as err:
        _deblur(client, path)
    text = str(err.value)
    assert message in text, text
    assert "Traceback" not in text and "/tmp/" not in text  # no stack trace, no server paths
    _check_good(client, tmp_path)


def test_invalid_settings_through_the_api(client, tmp_path):
    from gradio_client.exceptions import AppError

    path = tmp_path / "photo.png"
    _blurry(64, 48).save(path)
    with pytest.raises(AppError, match="Invalid setting"):
        _deblur(client, path, steps="many")
    # out-of-range values are clamped to what the UI offers
    _, _, _, png, report = _deblur(client, path, fidelity=7, steps=99, seed=-5, tile_size=100, tile_overlap=1000)
    assert Image.open(png).size == (64, 48) and "4 step(s), fidelity 1.00" in report


def test_upload_over_the_file_size_limit_is_refused(client, tmp_path):
    path = tmp_path / "noise.png"  # incompressible: ~1.2 MB > GLOW_MAX_UPLOAD_MB=1 on the test server
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 1000, 3), dtype=np.uint8)).save(path)
    assert path.stat().st_size > 1.1 * 2**20
    # launch(max_file_size=...) is published in the app config: gradio_client (like the page) refuses before sending
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        _deblur(client, path)
    _check_good(client, tmp_path)


def test_sixteen_bit_pngs_are_deblurred(client, tmp_path):
    rng = np.random.default_rng(0)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray((rng.random((64, 80)) * 65535).astype(np.uint16)).save(gray16)
    assert Image.open(gray16).mode == "I;16"
    _, _, _, png, report = _deblur(client, gray16)
    assert Image.open(png).size == (80, 64) and Image.open(png).mode == "L"
    assert "16-bit image: deblurred at full precision" in report

    rgb16 = tmp_path / "rgb16.png"
    _png16((rng.random((64, 80, 3)) * 65535).astype(np.uint16), rgb16)
    _, _, _, png, report = _deblur(client, rgb16)
    assert Image.open(png).size == (80, 64) and Image.open(png).mode == "RGB"
    assert "16-bit image: deblurred at full precision" in report


def test_cmyk_jpeg_is_deblurred(client, tmp_path):
    path = tmp_path / "print.jpg"
    _blurry(80, 64).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    pair, _, _, png, report = _deblur(client, path)
    assert Image.open(png).size == (80, 64) and "CMYK image: converted to RGB" in report


def test_animated_gif_uses_the_first_frame(client, tmp_path):
    path = tmp_path / "anim.gif"
    red, blue = Image.new("RGB", (64, 48), (220, 20, 20)), Image.new("RGB", (64, 48), (20, 20, 220))
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    pair, _, _, png, report = _deblur(client, path, fidelity=1.0)
    before = np.asarray(Image.open(pair[0]).convert("RGB"), np.float32)
    assert before[..., 0].mean() > 150 and before[..., 2].mean() < 80  # the red first frame
    assert "animated GIF (2 frames): the first frame was deblurred" in report


def test_exif_rotation_is_applied(client, tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    _blurry(80, 48).save(path, exif=exif, quality=95)
    pair, _, _, png, report = _deblur(client, path)
    assert Image.open(png).size == (48, 80) and Image.open(pair[0]).size == (48, 80)
    assert "48x80" in report


def test_spaces_gpu_is_a_no_op_off_spaces():
    import spaces

    def work():
        return 1

    assert "SPACES_ZERO_GPU" not in os.environ
    assert spaces.GPU(duration=60)(work) is work  # so @spaces.GPU costs nothing on this machine or a CPU Space


def test_rgba_keeps_alpha_and_gray_stays_gray(client, tmp_path):
    rgba = _blurry(80, 64).convert("RGBA")
    alpha = np.zeros((64, 80), np.uint8)
    alpha[:, 40:] = 255
    rgba.putalpha(Image.fromarray(alpha))
    path = tmp_path / "cutout.png"
    rgba.save(path)
    _, _, _, png, report = _deblur(client, path)
    out = Image.open(png)
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out.getchannel("A")), alpha)
    assert "transparency kept" in report

    path = tmp_path / "gray.png"
    _blurry(80, 64).convert("L").save(path)
    _, _, _, png, report = _deblur(client, path)
    assert Image.open(png).mode == "L"


def test_missing_model_gives_a_readable_error_and_the_app_stays_up(tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    server = _AppServer(tmp_path / "app.log", GLOW_MODEL=str(tmp_path / "no_such_model"))
    try:
        client = Client(server.url, verbose=False)
        path = tmp_path / "photo.png"
        _blurry(64, 48).save(path)
        for _ in range(2):
            with pytest.raises(AppError, match="could not be loaded") as err:
                _deblur(client, path)
            assert "Traceback" not in str(err.value)
        server.check_alive()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# The documented API snippet (docs/app.md), run for real
# ---------------------------------------------------------------------------------------------------------------
def test_documented_api_snippet_runs(app_url, tmp_path, monkeypatch):
    page = (ROOT / "docs" / "app.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    snippet = next(s for s in snippets if "api_name=\"/deblur\"" in s)
    assert "http://127.0.0.1:7860/" in snippet and "blurry.jpg" in snippet
    _blurry(96, 64).save(tmp_path / "blurry.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet.replace("http://127.0.0.1:7860/", app_url), "docs/app.md snippet", "exec"), namespace)
    assert (tmp_path / "deblurred.png").is_file()
    assert Image.open(tmp_path / "deblurred.png").size == (96, 64)


# ---------------------------------------------------------------------------------------------------------------
# The real page in headless Chromium
# ---------------------------------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.mark.browser
def test_browser_upload_deblur_download(app_url, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    example = ROOT / "examples" / "real_text_motion_opencv.jpg"
    if not example.is_file():
        pytest.skip("examples/ missing")
    screenshot = tmp_path / "app.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(app_url, wait_until="networkidle")
            assert "GLOWDeblur" in page.title()
            # an example from the gallery
            plate = page.locator("img[src*='real_licenseplate_opencv']")
            page.locator("#examples button.gallery-item", has=plate).click()
            page.wait_for_selector("#input-image img", timeout=30_000)
            page.click("#deblur-btn")
            page.wait_for_selector("#report :text('real_licenseplate_opencv.jpg')", timeout=120_000)
            assert "600x482" in page.inner_text("#report")
            # an upload
            page.set_input_files("#input-image input[type=file]", str(example))
            page.wait_for_selector("#input-image img", timeout=30_000)
            page.click("#deblur-btn")
            page.wait_for_selector("#report :text('real_text_motion_opencv.jpg')", timeout=120_000)
            report = page.inner_text("#report")
            assert "real_text_motion_opencv.jpg" in report and "588x365" in report
            assert "real_text_motion_opencv_deblurred.png" in re.sub(r"\s", "", page.inner_text("#download"))
            assert page.locator("#before-after img").count() >= 2
            assert page.locator("#motion-field img").count() == 1
            with page.expect_download() as download_info:
                page.locator("#download a").first.click()
            saved = tmp_path / "download.png"
            download_info.value.save_as(saved)
            assert Image.open(saved).size == (588, 365)
            page.screenshot(path=str(tmp_path / "result.png"), full_page=True)

            page.set_input_files("#input-image input[type=file]", str(_make_bad("text_as_png", tmp_path)))
            page.click("#deblur-btn")
            toast = page.locator("[data-testid=toast-text]", has_text="not a recognised image file")
            toast.wait_for(timeout=30_000)
            assert "'notes.png'" in toast.inner_text()
            page.wait_for_timeout(500)  # let the toast finish sliding in
            page.screenshot(path=str(screenshot))  # the viewport: the error toast is pinned to its top right
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000 and (tmp_path / "result.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'result.png'} {screenshot}")
