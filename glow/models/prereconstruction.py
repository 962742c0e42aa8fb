# Self-contained: imported by diffusers with trust_remote_code from a saved pipeline folder, where `glow` is not
# importable. Only torch, diffusers and the standard library.
"""PreReconstructionUNet: motion-guided Wiener deconvolution + a NAFNet-style U-Net (NAFNet_arch.py style).

``forward(blurry [B,3,H,W], kernels [B,H/64,W/64,K,K] | None, motion [B,3,H/8,W/8] | None)``
-> ``PreReconstructionOutput(image [B,3,H,W], features [B,feature_channels,H/8,W/8], wiener [B,3,H,W] | None)``.

Physics branch (``use_wiener=True``): every 64-px patch gets its own kernel; each patch is deconvolved in a
``wiener_tile``-sized window (stride 64) in the Fourier domain and the windows are blended back with a raised-cosine
overlap-add. The regulariser is the Wiener one for a natural-image gradient prior,
``λ(ω) = s_band(ω) · (σ̂² + σ0²) · |∇(ω)|²``, with ``σ̂`` a per-image noise estimate (Immerkær) and learned per-band
scales ``s_band`` and floor ``σ0`` — so it adapts to noise and is differentiable end to end. The Wiener estimate is an
extra U-Net input; the U-Net predicts a residual on the blurry image (zero-initialised: starts as identity).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

KERNEL_PATCH = 64  # Copied from glow.data.motion.KERNEL_PATCH (this module travels alone in saved folders)


@dataclass
class PreReconstructionOutput(BaseOutput):
    image: torch.Tensor
    features: torch.Tensor
    wiener: torch.Tensor | None = None


def estimate_noise_sigma(image):
    """Immerkær's fast noise estimate per image (mean over channels), ``[B,C,H,W] -> [B]`` (sigma in image units)."""
    b, c, h, w = image.shape
    lap = image.new_tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
    resp = F.conv2d(image.reshape(b * c, 1, h, w), lap)
    return math.sqrt(math.pi / 2) / 6.0 * resp.abs().reshape(b, -1).mean(dim=1)


def _raised_cosine(n, device, dtype):
    i = torch.arange(n, device=device, dtype=dtype)
    return torch.sin(math.pi * (i + 0.5) / n) ** 2


def wiener_deconvolve(image, kernels, band_log_scale, log_sigma0, tile=128, noise_sigma=None):
    """Patch-wise Wiener deconvolution with windowed overlap-add.

    image ``[B,C,H,W]`` (H, W multiples of 64), kernels ``[B,H/64,W/64,K,K]`` (K odd, <= tile),
    band_log_scale ``[n_bands]`` log regulariser scale per radial frequency band, log_sigma0 scalar tensor.
    Returns ``[B,C,H,W]``.
    """
    b, c, H, W = image.shape
    stride = KERNEL_PATCH
    h, w = H // stride, W // stride
    if kernels.shape[1:3] != (h, w):
        raise ValueError(f"kernels grid {tuple(kernels.shape[1:3])} does not match image {H}x{W} (/64 = {h}x{w})")
    ks = kernels.shape[-1]
    if ks > tile:
        crop = (ks - tile) // 2 + 1
        kernels = kernels[..., crop:-crop, crop:-crop]
        kernels = kernels / kernels.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-8)
        ks = kernels.shape[-1]
    m = (tile - stride) // 2
    x = F.pad(image, (m, m, m, m), mode="reflect")
    patches = x.unfold(2, tile, stride).unfold(3, tile, stride)  # [B,C,h,w,t,t]
    # kernel centred at the origin (circular) so the deconvolution does not shift the image
    kpad = F.pad(kernels, (0, tile - ks, 0, tile - ks))
    kpad = torch.roll(kpad, shifts=(-(ks // 2), -(ks // 2)), dims=(-2, -1))
    Kf = torch.fft.rfft2(kpad).unsqueeze(1)  # [B,1,h,w,t,t//2+1]
    # edge taper (as MATLAB's edgetaper): near the tile border blend towards the circularly blurred tile, so the
    # circular model of the FFT holds there and the deconvolution does not ring from the tile edges
    Y = torch.fft.rfft2(patches)
    dist = torch.minimum(torch.arange(tile, device=image.device), torch.arange(tile, 0, -1, device=image.device))
    taper1 = torch.sin(0.5 * math.pi * torch.clamp(dist / float(max(ks // 2, 1)), 0, 1)).to(image.dtype) ** 2
    taper = taper1.view(-1, 1) * taper1.view(1, -1)
    patches = taper * patches + (1 - taper) * torch.fft.irfft2(Y * Kf, s=(tile, tile))
    Y = torch.fft.rfft2(patches)
    fy = torch.fft.fftfreq(tile, device=image.device, dtype=image.dtype).view(-1, 1)
    fx = torch.fft.rfftfreq(tile, device=image.device, dtype=image.dtype).view(1, -1)
    grad2 = (2 - 2 * torch.cos(2 * math.pi * fx)) + (2 - 2 * torch.cos(2 * math.pi * fy))  # |Dx|^2 + |Dy|^2
    n_bands = band_log_scale.shape[0]
    radius = torch.sqrt(fx**2 + fy**2) / math.sqrt(0.5)  # in [0, 1]
    band = (radius * n_bands).long().clamp_max(n_bands - 1)
    if noise_sigma is None:
        noise_sigma = estimate_noise_sigma(image)
    noise_var = (noise_sigma**2 + torch.exp(2 * log_sigma0)).view(b, 1, 1, 1, 1, 1)
    lam = torch.exp(band_log_scale)[band] * grad2 * noise_var + 1e-6
    X = Y * torch.conj(Kf) / (Kf.real**2 + Kf.imag**2 + lam)
    out = torch.fft.irfft2(X, s=(tile, tile))
    win1 = _raised_cosine(tile, image.device, image.dtype)
    win = win1.view(-1, 1) * win1.view(1, -1)
    out = out * win
    cols = out.permute(0, 1, 4, 5, 2, 3).reshape(b, c * tile * tile, h * w)
    size = (H + 2 * m, W + 2 * m)
    acc = F.fold(cols, size, kernel_size=tile, stride=stride)
    wsum = F.fold(win.reshape(1, tile * tile, 1).expand(1, tile * tile, h * w), size, kernel_size=tile, stride=stride)
    return (acc / wsum.clamp_min(1e-6))[..., m : m + H, m : m + W]


class Conv1x1(nn.Conv2d):
    """1x1 convolution as a matmul on the NHWC view: PyTorch's CPU conv2d takes a slow im2col path for 1x1 kernels
    at batch size 1; this is copy-free for channels_last inputs. Same parameters/state-dict keys as nn.Conv2d."""

    def __init__(self, cin, cout, bias=True):
        super().__init__(cin, cout, 1, bias=bias)

    def forward(self, x):
        y = F.linear(x.permute(0, 2, 3, 1), self.weight[:, :, 0, 0], self.bias)
        return y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        # fused layer_norm over channels on the NHWC view (a free permute for channels_last tensors)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    def __init__(self, c, dw_expand=2, ffn_expand=2):
        super().__init__()
        dw = c * dw_expand
        self.norm1 = LayerNorm2d(c)
        self.conv1 = Conv1x1(c, dw)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sg = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = Conv1x1(dw // 2, c)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = Conv1x1(c, ffn_expand * c)
        self.conv5 = Conv1x1(ffn_expand * c // 2, c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp):
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class PreReconstructionUNet(ModelMixin, ConfigMixin):
    """NAFNet-style U-Net with 3 downsamplings (/8 bottleneck = the transformer's token grid)."""

    @register_to_config
    def __init__(
        self,
        width: int = 16,
        enc_blocks: tuple = (1, 1, 1),
        middle_blocks: int = 2,
        dec_blocks: tuple = (1, 1, 1),
        feature_channels: int = 64,
        use_wiener: bool = True,
        use_motion: bool = True,
        wiener_tile: int = 128,
        wiener_bands: int = 8,
        wiener_init_log_scale: float = 6.0,
        wiener_init_sigma0: float = 0.01,
    ):
        super().__init__()
        if len(enc_blocks) != 3 or len(dec_blocks) != 3:
            raise ValueError("enc_blocks and dec_blocks need 3 entries (the bottleneck must sit at /8)")
        if wiener_tile % KERNEL_PATCH or wiener_tile < 2 * KERNEL_PATCH:
            raise ValueError("wiener_tile must be a multiple of 64 and >= 128")
        c = width
        self.intro = nn.Conv2d(6 if use_wiener else 3, c, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.motion_in = Conv1x1(3, c) if use_motion else None
        self.middle = nn.Sequential(*[NAFBlock(c) for _ in range(middle_blocks)])
        self.to_features = Conv1x1(c, feature_channels)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in dec_blocks:
            self.ups.append(nn.Sequential(Conv1x1(c, 2 * c, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.ending = nn.Conv2d(c, 3, 3, padding=1)
        # identity at initialisation: the pre-reconstruction starts as the blurry image
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)
        if use_wiener:
            self.wiener_band_log_scale = nn.Parameter(torch.full((wiener_bands,), float(wiener_init_log_scale)))
            self.wiener_log_sigma0 = nn.Parameter(torch.tensor(math.log(wiener_init_sigma0)))

    def wiener(self, blurry, kernels, noise_sigma=None):
        """The physics branch alone (differentiable): ``[B,3,H,W]``. In float32 whatever the model's dtype: FFTs
        need it (CPU has no half-precision FFT; CUDA only for power-of-two sizes) and it is cheap next to the U-Net."""
        return wiener_deconvolve(
            blurry.float(), kernels.float(), self.wiener_band_log_scale.float(), self.wiener_log_sigma0.float(),
            self.config.wiener_tile, noise_sigma,
        ).to(blurry.dtype)

    def forward(self, blurry, kernels=None, motion=None, return_dict=True):
        _, _, h, w = blurry.shape
        if h % KERNEL_PATCH or w % KERNEL_PATCH:
            raise ValueError(f"PreReconstructionUNet needs H, W multiples of {KERNEL_PATCH}, got {h}x{w}")
        wiener = None
        if self.config.use_wiener:
            if kernels is None:
                raise ValueError("use_wiener=True needs `kernels` [B, H/64, W/64, K, K]")
            # clamp: Wiener ringing near saturated areas can be large; the U-Net only needs a bounded hint
            wiener = self.wiener(blurry, kernels).clamp(-0.5, 1.5)
            x = torch.cat([blurry, wiener], dim=1)
        else:
            x = blurry
        # channels_last: several times faster depthwise/1x1 convolutions and layer norms on CPU
        x = self.intro((x * 2 - 1).contiguous(memory_format=torch.channels_last))
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        if self.motion_in is not None:
            if motion is None:
                raise ValueError("use_motion=True needs `motion` [B, 3, H/8, W/8]")
            # length in px -> log scale so long blurs do not dominate
            m = torch.cat([motion[:, :2], torch.log1p(motion[:, 2:3].clamp_min(0))], dim=1)
            x = x + self.motion_in(m)
        x = self.middle(x)
        features = self.to_features(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec((up(x) + skip).contiguous(memory_format=torch.channels_last))  # pixel_shuffle returns NCHW
        image = blurry + self.ending(x).contiguous()
        if not return_dict:
            return image, features, wiener
        return PreReconstructionOutput(image=image, features=features, wiener=wiener)
