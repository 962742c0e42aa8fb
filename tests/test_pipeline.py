"""GLOWDeblurPipeline end to end on the tiny preset (real components, random weights, no mocks)."""
import io

import numpy as np
import PIL.Image
import pytest
import torch

from glow.pipeline_glowdeblur import GLOWDeblurPipeline
from glow.presets import build_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", seed=0)
    # the shipped init makes the pre-reconstruction an identity; give it a non-zero output so the tests below can
    # tell the pre-reconstruction from the input
    torch.manual_seed(1)
    torch.nn.init.normal_(p.prereconstruction.ending.weight, std=0.05)
    p.set_progress_bar_config(disable=True)
    return p


def _smooth_image(h, w, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, c, 6, 6, generator=g), size=(h, w), mode="bicubic")
    return x[0].clamp(0, 1)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("h,w", [(37, 53), (64, 64), (130, 71)])
def test_shapes_dtypes_odd_sizes(pipe, h, w):
    img = (_smooth_image(h, w).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = pipe(img, generator=_gen(), output_type="np")
    assert out.images[0].shape == (h, w, 3) and out.images[0].dtype == np.float32
    assert out.prereconstructions[0].shape == (h, w, 3)
    assert out.motion_fields[0].shape == (3, -(-h // 8), -(-w // 8))
    assert 0 <= out.images[0].min() and out.images[0].max() <= 1
    pil = pipe(PIL.Image.fromarray(img), generator=_gen()).images[0]
    assert isinstance(pil, PIL.Image.Image) and pil.size == (w, h) and pil.mode == "RGB"
    pt = pipe(torch.from_numpy(img).permute(2, 0, 1).float() / 255, generator=_gen(), output_type="pt").images[0]
    assert pt.shape == (3, h, w) and pt.dtype == torch.float32


def test_seeded_determinism(pipe):
    img = _smooth_image(96, 80)
    a = pipe(img, generator=_gen(3), output_type="pt").images[0]
    b = pipe(img, generator=_gen(3), output_type="pt").images[0]
    c = pipe(img, generator=_gen(4), output_type="pt").images[0]
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-4


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_x0_prediction_of_zero_residual_returns_the_prereconstruction(steps):
    # prediction_type "sample": the transformer predicts the clean residual, so a zero output (how training starts)
    # must land exactly on the pre-reconstruction after any number of Euler steps, whatever the noise
    p = build_pipeline("tiny", seed=0)
    assert p.config.prediction_type == "sample"
    torch.nn.init.zeros_(p.transformer.proj_out.weight)
    torch.nn.init.zeros_(p.transformer.proj_out.bias)
    p.set_progress_bar_config(disable=True)
    out = p(_smooth_image(64, 72), num_inference_steps=steps, generator=_gen(3), output_type="pt")
    assert torch.allclose(out.images[0], out.prereconstructions[0], atol=1e-5)


def test_fidelity_one_returns_prereconstruction_exactly(pipe):
    img = _smooth_image(96, 80)
    full = pipe(img, generator=_gen(), output_type="pt", fidelity=0.0)
    exact = pipe(img, generator=_gen(), output_type="pt", fidelity=1.0)
    assert torch.equal(exact.images[0], exact.prereconstructions[0])
    assert torch.equal(exact.prereconstructions[0], full.prereconstructions[0])
    assert (full.images[0] - full.prereconstructions[0]).abs().mean() > 1e-3  # the diffusion did something
    assert (exact.images[0] - img).abs().mean() > 1e-3  # and the pre-reconstruction is not the input
    half = pipe(img, generator=_gen(), output_type="pt", fidelity=0.5).images[0]
    expected = exact.images[0] + 0.5 * (full.images[0] - exact.images[0])
    unclipped = (full.images[0] > 0) & (full.images[0] < 1) & (exact.images[0] > 0) & (exact.images[0] < 1)
    assert unclipped.float().mean() > 0.5
    assert torch.allclose(half[unclipped], expected[unclipped], atol=1e-5)


@pytest.mark.parametrize("fidelity", [0.0, 1.0])
def test_tiled_equals_untiled(pipe, fidelity):
    img = _smooth_image(200, 260)
    whole = pipe(img, generator=_gen(), output_type="pt", tile_size=None, fidelity=fidelity)
    tiled = pipe(img, generator=_gen(), output_type="pt", tile_size=128, tile_overlap=64, fidelity=fidelity)
    diff = (whole.images[0] - tiled.images[0]).abs()
    signal = (whole.images[0] - img).abs().mean()
    assert signal > 1e-2
    # per-tile global statistics (channel attention pooling, linear attention) differ slightly; seams would not
    assert diff.mean() < 0.05 * signal and diff.max() < 0.05, (float(diff.mean()), float(diff.max()))
    assert (whole.motion_fields[0] - tiled.motion_fields[0]).abs().mean() < 0.05


def test_prompt_changes_output(pipe):
    img = _smooth_image(64, 96)
    empty = pipe(img, generator=_gen(), output_type="pt").images[0]
    none = pipe(img, prompt=None, generator=_gen(), output_type="pt").images[0]
    car = pipe(img, prompt="a red car parked on a street", generator=_gen(), output_type="pt").images[0]
    text = pipe(img, prompt="a page of printed text", generator=_gen(), output_type="pt").images[0]
    assert torch.equal(empty, none)
    assert (car - empty).abs().mean() > 1e-4 and (car - text).abs().mean() > 1e-4
    cfg = pipe(img, prompt="a red car parked on a street", guidance_scale=3.0, generator=_gen(), output_type="pt")
    assert (cfg.images[0] - car).abs().mean() > 1e-4
    # fidelity=1 skips the transformer: the prompt cannot matter
    a = pipe(img, prompt="a red car", fidelity=1.0, output_type="pt").images[0]
    b = pipe(img, prompt="text", fidelity=1.0, output_type="pt").images[0]
    assert torch.equal(a, b)


def test_captioner_callable_becomes_prompt(pipe):
    img = _smooth_image(64, 64)
    seen = []

    def captioner(pil):
        seen.append(pil.size)
        return "a red car parked on a street"

    by_caption = pipe(img, captioner=captioner, generator=_gen(), output_type="pt").images[0]
    by_prompt = pipe(img, prompt="a red car parked on a street", generator=_gen(), output_type="pt").images[0]
    assert seen == [(64, 64)] and torch.equal(by_caption, by_prompt)


def test_modes_gray_alpha_16bit_exif_tiny(pipe):
    rgb = (_smooth_image(40, 56).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    gray = PIL.Image.fromarray(rgb[..., 0])
    out = pipe(gray, generator=_gen()).images[0]
    assert out.mode == "L" and out.size == (56, 40)
    rgba = np.dstack([rgb, np.arange(40 * 56).reshape(40, 56) % 256]).astype(np.uint8)
    out = pipe(PIL.Image.fromarray(rgba, "RGBA"), generator=_gen()).images[0]
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])
    out = pipe(rgba, generator=_gen(), output_type="np").images[0]
    assert out.shape == (40, 56, 4) and np.allclose(out[..., 3], rgba[..., 3] / 255.0)
    g16 = (rgb[..., 0].astype(np.uint16) * 257)
    out = pipe(PIL.Image.fromarray(g16), generator=_gen()).images[0]
    assert out.mode == "I;16" and out.size == (56, 40)
    out = pipe(rgb.astype(np.uint16) * 257, generator=_gen(), output_type="np").images[0]
    assert out.shape == (40, 56, 3)
    one = pipe(rgb[..., :1], generator=_gen(), output_type="np").images[0]
    assert one.shape == (40, 56, 1)
    # EXIF orientation 6 (rotate 90° clockwise): a 56x40 stored image is shown as 40x56
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format="JPEG", exif=exif.tobytes())
    out = pipe(PIL.Image.open(io.BytesIO(buf.getvalue())), generator=_gen()).images[0]
    assert out.size == (40, 56)
    for h, w in [(5, 7), (1, 1), (15, 3)]:
        out = pipe(np.full((h, w, 3), 128, np.uint8), generator=_gen(), output_type="np")
        assert out.images[0].shape == (h, w, 3) and out.motion_fields[0].shape == (3, -(-h // 8), -(-w // 8))


def test_batches(pipe):
    imgs = [_smooth_image(40, 48, seed=1), _smooth_image(72, 33, seed=2)]
    out = pipe(imgs, generator=[_gen(0), _gen(1)], output_type="pt")
    assert [tuple(i.shape) for i in out.images] == [(3, 40, 48), (3, 72, 33)]
    single = pipe(imgs[1], generator=_gen(1), output_type="pt").images[0]
    assert torch.allclose(out.images[1], single, atol=1e-6)
    batch = torch.stack([_smooth_image(64, 64, seed=s) for s in range(3)])
    out = pipe(batch, prompt=["", "a dog", "a cat"], generator=_gen(), output_type="pt")
    assert len(out.images) == 3 and len(out.motion_fields) == 3
    images, motions, pres, kernels, confidences, weights = pipe(batch[:1], return_dict=False, output_type="pt")
    assert len(images) == len(motions) == len(pres) == len(kernels) == len(confidences) == len(weights) == 1


def test_callbacks(pipe):
    img = _smooth_image(200, 200)
    steps, tiles = [], []

    def on_step(p, step, timestep, kwargs):
        assert p is pipe and set(kwargs) == {"latents", "prereconstruction"}
        assert kwargs["latents"].shape == (1, 192, 32, 32) and kwargs["prereconstruction"].shape == (1, 3, 256, 256)
        steps.append(step)
        return {}

    def on_tile(p, index, total, kwargs):
        tiles.append((index, total, kwargs))

    pipe(img, num_inference_steps=2, tile_size=128, tile_overlap=64, callback_on_step_end=on_step,
         callback_on_step_end_tensor_inputs=["latents", "prereconstruction"], callback_on_tile_end=on_tile)
    assert steps == [0, 1] and pipe.num_timesteps == 2 and not pipe.do_classifier_free_guidance
    # 200 px -> padded 256 -> tiles start at 0, 64, 128 on each axis; three passes (pre-reconstruction, 2 steps)
    assert [t[0] for t in tiles] == list(range(27)) and all(t[1] == 27 for t in tiles)
    assert [t[2]["step"] for t in tiles] == [None] * 9 + [0] * 9 + [1] * 9
    assert tiles[4][2]["box"] == (64, 64, 192, 192) and tiles[4][2]["tiles_per_pass"] == 9
    tiles.clear()
    pipe([img, img[:, :64, :64]], fidelity=1.0, tile_size=128, callback_on_tile_end=on_tile)
    assert [(t[0], t[1], t[2]["image_index"]) for t in tiles] == [(i, 10, int(i == 9)) for i in range(10)]


def test_a_returned_latent_replaces_the_latents(pipe):
    img = _smooth_image(64, 64)
    base = pipe(img, generator=_gen(), output_type="pt")
    zeroed = pipe(img, generator=_gen(), output_type="pt", num_inference_steps=2,
                  callback_on_step_end=lambda p, i, t, kw: {"latents": torch.zeros_like(kw["latents"])})
    # latents of zero after the last step = a zero residual: the output is the pre-reconstruction
    assert torch.allclose(zeroed.images[0], zeroed.prereconstructions[0], atol=1e-6)
    assert (base.images[0] - base.prereconstructions[0]).abs().mean() > 1e-3


def test_tile_weights_sum_to_one():
    from glow.image_processing_glowdeblur import tile_grid

    for height, width, size, overlap in [(256, 384, 128, 64), (640, 192, 256, 128), (128, 128, None, 0)]:
        total = torch.zeros(1, 1, height, width)
        for tile in tile_grid(height, width, size, overlap):
            tile.crop(total).add_(tile.weight())
        assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        ("photo.jpg", TypeError, "PIL.Image, a numpy array"),
        (42, TypeError, "got int"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (np.zeros((8, 8, 3), np.int32), TypeError, "dtype int32"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, "5 channels"),
        (np.full((8, 8, 3), 255.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.zeros((2, 2, 8, 8, 3), np.uint8), ValueError, "shape"),
        (torch.zeros(8, 8, 3, 2, dtype=torch.float32), ValueError, "2 channels|channels"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "dtype"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_inputs(pipe, bad, error, match):
    with pytest.raises(error, match=match):
        pipe(bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fidelity=1.5), "fidelity"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(tile_size=100), "tile_size"),
        (dict(tile_size=128, tile_overlap=128), "tile_overlap"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(prompt=["a", "b"]), "prompts"),
    ],
)
def test_bad_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(np.zeros((16, 16, 3), np.uint8), **kwargs)


def test_transformer_accepts_variable_grids(pipe):
    # no absolute position embedding: any /8 grid works, including non-square ones
    for h, w in [(3, 5), (8, 8), (11, 2)]:
        hidden = torch.randn(1, pipe.transformer.config.in_channels, h, w)
        out = pipe.transformer(hidden, encoder_hidden_states=torch.randn(1, 4, 384), timestep=torch.tensor([500.0]))
        assert out.sample.shape == (1, 192, h, w)


def test_latent_conventions_round_trip():
    residual = torch.randn(2, 3, 64, 128) * 0.1
    lat = GLOWDeblurPipeline.residual_to_latents(residual, 10.0)
    assert lat.shape == (2, 192, 8, 16)
    assert torch.allclose(GLOWDeblurPipeline.latents_to_residual(lat, 10.0), residual, atol=1e-7)


def test_palette_cmyk_la_modes(pipe):
    rgb = (_smooth_image(32, 48).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    base = PIL.Image.fromarray(rgb)
    for img, mode in [(base.convert("P"), "RGB"), (base.convert("CMYK"), "RGB"), (base.convert("LA"), "LA"),
                      (base.convert("1"), "L")]:
        out = pipe(img, generator=_gen()).images[0]
        assert out.mode == mode and out.size == (48, 32), (img.mode, out.mode)
    la = base.convert("LA")
    assert np.array_equal(np.asarray(pipe(la, generator=_gen()).images[0])[..., 1], np.asarray(la)[..., 1])


def test_prompt_embeds_equal_prompt(pipe):
    img = _smooth_image(64, 64)
    emb, mask = pipe.encode_prompt(["a red car"])
    assert emb.shape[0] == 1 and emb.shape[2] == 384 and mask.shape == emb.shape[:2]
    by_text = pipe(img, prompt="a red car", generator=_gen(), output_type="pt").images[0]
    by_emb = pipe(img, prompt_embeds=emb, prompt_attention_mask=mask, generator=_gen(), output_type="pt").images[0]
    assert torch.allclose(by_text, by_emb, atol=1e-6)


def test_without_wiener_for_the_ablation():
    from glow.presets import get_preset

    cfg = get_preset("tiny")
    cfg["prereconstruction"]["use_wiener"] = False
    p = build_pipeline(cfg, seed=0)
    p.set_progress_bar_config(disable=True)
    assert not hasattr(p.prereconstruction, "wiener_band_log_scale")
    out = p(_smooth_image(50, 70), generator=_gen(), output_type="pt")
    assert out.images[0].shape == (3, 50, 70) and out.prereconstructions[0].shape == (3, 50, 70)


def _shapes_photo(h=192, w=256, seed=0):
    """Hard-edged rectangles and discs on a flat background: sharp, with flat patches where noise would show."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.5, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(14):
        colour = rng.uniform(0.1, 0.9, 3)
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 40)
        if rng.random() < 0.5:
            img[max(0, y - r) : y + r, max(0, x - r // 2) : x + r // 2] = colour
        else:
            img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = colour
    return torch.from_numpy(img).permute(2, 0, 1)


def test_blur_and_noise_measures():
    """The gate's measures: Crete's blur reads as scikit-image's blur_effect, and rises with a blur; the noise floor
    reads an added white noise's sigma through the photo's edges, and ~0 on the clean photo."""
    from skimage.measure import blur_effect

    from glow.image_processing_glowdeblur import blur_measure, noise_floor

    sharp = _shapes_photo()
    blurred = torch.nn.functional.avg_pool2d(sharp[None], 9, stride=1, padding=4, count_include_pad=False)[0]
    for x in (sharp, blurred):
        assert abs(blur_measure(x) - blur_effect(x.permute(1, 2, 0).numpy().astype(np.float64), channel_axis=-1)) < 0.01
    assert blur_measure(sharp) < 0.3 < 0.6 < blur_measure(blurred)
    assert noise_floor(sharp) < 1e-4
    for sigma in (0.005, 0.02):
        noisy = sharp + sigma * torch.randn(sharp.shape, generator=_gen(1)) / 0.587  # luminance ~ sigma
        assert 0.75 * sigma < noise_floor(noisy) < 1.25 * sigma, (sigma, noise_floor(noisy))
    assert blur_measure(sharp[:, :3, :3]) == 0.0 and noise_floor(sharp[:, :5, :5]) == 0.0  # too small: no answer


def test_a_plainly_sharp_clean_photo_skips_the_kernel_search(pipe):
    """Below ``sharp_blur_measure`` with a clean noise floor the pipeline does not run the search (it would find no
    blur): the component's forward is never called, and the outputs say "no blur" (a delta kernel, confidence 0).
    A blurred photo, or the setting at None, runs it."""
    calls = []
    hook = pipe.blind_deconvolution.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        sharp = _shapes_photo()
        out = pipe(sharp, generator=_gen(), output_type="pt")
        assert calls == [] and out.blur_confidences == [0.0] and float(out.kernels[0].max()) == 1.0
        assert torch.equal(out.images[0], sharp) and out.motion_fields[0].abs().max() == 0
        blurred = torch.nn.functional.avg_pool2d(sharp[None], 15, stride=1, padding=7, count_include_pad=False)[0]
        pipe(blurred, generator=_gen(), output_type="pt")
        assert calls == [1]
        limit = pipe.config.sharp_blur_measure
        try:
            pipe.register_to_config(sharp_blur_measure=None)
            pipe(sharp, generator=_gen(), output_type="pt")
        finally:
            pipe.register_to_config(sharp_blur_measure=limit)
        assert calls == [1, 1]
    finally:
        hook.remove()


def test_auto_networks_leave_a_sharp_clean_photo_alone(pipe):
    """networks="auto" (the default): a sharp, clean photo comes back as it was (the networks would soften it); the
    same photo noisy or blurred gets them in full, as networks=True gives; a weight between blends the two."""
    sharp = _shapes_photo()
    auto = pipe(sharp, generator=_gen(), output_type="pt")
    forced = pipe(sharp, generator=_gen(), output_type="pt", networks=True)
    assert auto.networks_weights == [0.0] and forced.networks_weights == [1.0]
    assert auto.blur_confidences == [0.0] and torch.allclose(auto.images[0], sharp, atol=1e-6)
    assert (forced.images[0] - sharp).abs().mean() > 1e-3
    noisy = (sharp + 0.03 * torch.randn(sharp.shape, generator=_gen(2))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(sharp[None], 15, stride=1, padding=7, count_include_pad=False)[0]
    for photo in (noisy, blurred):
        out = pipe(photo, generator=_gen(), output_type="pt")
        assert out.networks_weights == [1.0]
        assert torch.equal(out.images[0], pipe(photo, generator=_gen(), output_type="pt", networks=True).images[0])
    from glow.image_processing_glowdeblur import noise_floor

    noise_range = pipe.config.networks_noise_range
    try:  # the photo's noise floor halfway up the ramp: half the networks' change
        pipe.register_to_config(networks_noise_range=[0.0, 2 * noise_floor(noisy)])
        half = pipe(noisy, generator=_gen(), output_type="pt")
    finally:
        pipe.register_to_config(networks_noise_range=noise_range)
    weight = half.networks_weights[0]
    assert abs(weight - 0.5) < 1e-6
    alone = pipe(noisy, generator=_gen(), output_type="pt", networks=False).images[0]
    full = pipe(noisy, generator=_gen(), output_type="pt", networks=True).images[0]
    inside = (full > 0) & (full < 1)  # the outputs are clipped to [0, 1], the blend is not
    assert inside.float().mean() > 0.9
    assert torch.allclose(half.images[0][inside], (alone + weight * (full - alone))[inside], atol=1e-5)
    with pytest.raises(ValueError, match="networks"):
        pipe(sharp, networks="sometimes")
