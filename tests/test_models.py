"""GLOWDeblur components on tiny configs: shapes, gradients, losses, and the Wiener physics branch."""

import pytest
import torch
import torch.nn.functional as F

from glow.models.motion_estimator import MotionEstimator, _line_kernel
from glow.models.prereconstruction import PreReconstructionUNet, estimate_noise_sigma, wiener_deconvolve
from glow.presets import build_pipeline, count_parameters, get_preset
from glow.training.losses import kernel_loss, motion_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def _psnr(a, b):
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def _test_image(size=256, seed=0):
    """Synthetic 'natural' image: smooth colour fields + sharp-edged shapes + texture."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = base.clone()
    for _ in range(12):
        cy, cx, r = torch.randint(0, size, (2,), generator=g).tolist() + [int(torch.randint(8, 40, (1,), generator=g))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).float()
        img = img * (1 - mask) + mask * torch.rand(3, 1, 1, generator=g)
    stripes = 0.1 * torch.sin(xx * 0.25 + yy * 0.1)[None, None] * (xx > size // 2).float()
    return (img + stripes).clamp(0, 1)


def _blur(img, kernel):
    k = kernel.shape[-1]
    pad = F.pad(img, (k // 2,) * 4, mode="reflect")
    return F.conv2d(pad, kernel.flip(0, 1)[None, None].expand(3, 1, k, k), groups=3)


def test_wiener_with_true_kernel_raises_psnr():
    torch.manual_seed(0)
    sharp = _test_image(256)
    kernel = torch.tensor(_line_kernel(31, 17, 0.6), dtype=torch.float32)
    blurry = (_blur(sharp, kernel) + 0.005 * torch.randn(1, 3, 256, 256)).clamp(0, 1)
    unet = PreReconstructionUNet(**get_preset("tiny")["prereconstruction"])
    kernels = kernel[None, None, None].expand(1, 4, 4, 31, 31)
    with torch.no_grad():
        restored = unet.wiener(blurry, kernels).clamp(0, 1)
        # a wrong (delta) kernel must not help: proves the gain comes from the kernel, not from sharpening
        delta = torch.zeros(31, 31)
        delta[15, 15] = 1
        unchanged = unet.wiener(blurry, delta[None, None, None].expand(1, 4, 4, 31, 31)).clamp(0, 1)
    inner = (..., slice(32, -32), slice(32, -32))
    before, after = _psnr(blurry[inner], sharp[inner]), _psnr(restored[inner], sharp[inner])
    assert after > before + 3.0, (before, after)
    assert _psnr(unchanged[inner], sharp[inner]) < before + 0.5


def test_wiener_identity_kernel_is_identity():
    img = torch.rand(1, 3, 128, 192)
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1
    out = wiener_deconvolve(img, delta.expand(1, 2, 3, 9, 9), torch.full((4,), -20.0), torch.tensor(-20.0))
    assert torch.allclose(out, img, atol=1e-4)


def test_noise_estimate():
    torch.manual_seed(0)
    flat = torch.full((1, 3, 128, 128), 0.5)
    sigma = estimate_noise_sigma(flat + 0.02 * torch.randn_like(flat))
    assert abs(float(sigma) - 0.02) < 0.003


def test_motion_estimator_shapes_and_kernels():
    cfg = get_preset("tiny")["motion_estimator"]
    me = MotionEstimator(**cfg)
    out = me(torch.rand(2, 3, 128, 192))
    assert out.motion.shape == (2, 3, 16, 24)
    assert out.kernel_weights.shape == (2, cfg["num_basis"], 2, 3)
    k = cfg["kernel_size"]
    assert out.kernels.shape == (2, 2, 3, k, k)
    assert (out.kernels >= 0).all()
    assert torch.allclose(out.kernels.sum(dim=(-1, -2)), torch.ones(2, 2, 3), atol=1e-5)
    assert (out.motion[:, :2].abs() <= 1).all() and (out.motion[:, 2] >= 0).all()
    with pytest.raises(ValueError, match="multiples of 64"):
        me(torch.rand(1, 3, 100, 128))


def test_losses_zero_at_truth_and_masked():
    me = MotionEstimator(**get_preset("tiny")["motion_estimator"])
    kern = me.kernel_basis[:2].reshape(1, 1, 2, 15, 15).detach()
    true75 = F.pad(kern, (30, 30, 30, 30))
    assert float(kernel_loss(kern, true75, torch.ones(1, 1, 2))) < 1e-5
    wrong = torch.flip(true75, dims=(2,))
    assert float(kernel_loss(kern, wrong, torch.ones(1, 1, 2))) > 0.1
    assert float(kernel_loss(kern, wrong, torch.zeros(1, 1, 2))) == 0.0
    m = torch.rand(1, 3, 4, 4)
    assert float(motion_loss(m, m, torch.ones(1, 1, 4, 4))) == 0.0
    assert float(motion_loss(m, m + 1, torch.zeros(1, 1, 4, 4))) == 0.0
    assert float(motion_loss(m, m + 1, torch.ones(1, 1, 4, 4))) > 0.1


@pytest.mark.parametrize("use_wiener", [True, False])
def test_prereconstruction_shapes_and_gradients(use_wiener):
    cfg = dict(get_preset("tiny")["prereconstruction"], use_wiener=use_wiener)
    me = MotionEstimator(**get_preset("tiny")["motion_estimator"])
    unet = PreReconstructionUNet(**cfg)
    torch.nn.init.normal_(unet.ending.weight, std=0.01)  # non-zero so gradients reach the whole network
    x = torch.rand(1, 3, 128, 128)
    est = me(x)
    out = unet(x, kernels=est.kernels, motion=est.motion)
    assert out.image.shape == (1, 3, 128, 128)
    assert out.features.shape == (1, cfg["feature_channels"], 16, 16)
    assert (out.wiener is not None) == use_wiener
    (out.image.mean() + out.features.mean()).backward()
    assert me.basis_logits.grad is not None if use_wiener else me.basis_logits.grad is None
    if use_wiener:
        assert unet.wiener_band_log_scale.grad.abs().sum() > 0
        assert me.basis_logits.grad.abs().sum() > 0


def test_prereconstruction_starts_as_identity():
    unet = PreReconstructionUNet(**get_preset("tiny")["prereconstruction"])
    x = torch.rand(1, 3, 64, 64)
    k = torch.zeros(1, 1, 1, 15, 15)
    k[..., 7, 7] = 1
    assert torch.equal(unet(x, kernels=k, motion=torch.zeros(1, 3, 8, 8)).image, x)


def test_presets_budget():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    small = build_pipeline("small")
    counts = count_parameters(small)
    assert counts["total"] <= 15_000_000
    assert "training_status" not in small.config  # provenance lives in the model card
    tiny = count_parameters(build_pipeline("tiny"))
    assert tiny["total"] < counts["total"]


def test_kernel_basis_mixtures_beat_single_lines_on_curved_shake():
    """The kernel representation is more than a line: a mixture over the basis fits a curved shake trajectory
    better than the best single basis kernel (what a straight-line model could at most do)."""
    me = MotionEstimator(**get_preset("small")["motion_estimator"])
    basis = me.kernel_basis.detach()
    size = basis.shape[-1]
    # an arc-shaped camera-shake kernel
    curved = torch.zeros(size, size)
    c = size // 2
    for t in torch.linspace(-1, 1, 200):
        y, x = c + 8 * float(t) ** 2 - 4, c + 12 * float(t)
        curved[int(round(y)), int(round(x))] += 1
    curved /= curved.sum()
    target = curved[None, None, None]
    single = min(float(kernel_loss(b[None, None, None], target)) for b in basis)
    logits = torch.zeros(basis.shape[0], requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        mix = torch.einsum("n,nij->ij", torch.softmax(logits, 0), basis)
        loss = kernel_loss(mix[None, None, None], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < single - 0.1, (float(loss.detach()), single)
