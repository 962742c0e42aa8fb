"""The trainable module (the three components and every training loss) and the flow-matching inputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpointing import COMPONENTS


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def frequency_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # L1 between the 2-D spectra (as in MIMO-UNet / MPRNet): penalises lost high frequencies that a pixel loss averages
    fx, fy = torch.fft.rfft2(x.float(), norm="ortho"), torch.fft.rfft2(y.float(), norm="ortho")
    return (torch.view_as_real(fx) - torch.view_as_real(fy)).abs().mean()


def motion_loss(pred_motion, true_motion, valid=None, length_scale=20.0):
    """Masked L1 on the motion field. ``pred/true [B,3,h8,w8]``, ``valid [B,1,h8,w8]`` (1 = known truth).

    The length channel (pixels) is divided by ``length_scale`` so all channels weigh about the same.
    Returns a scalar (0 when nothing is valid).
    """
    scale = pred_motion.new_tensor([1.0, 1.0, 1.0 / length_scale]).view(1, 3, 1, 1)
    err = ((pred_motion - true_motion) * scale).abs()
    if valid is None:
        return err.mean()
    valid = valid.to(err.dtype)
    return (err * valid).sum() / (3 * valid.sum()).clamp_min(1.0)

def kernel_loss(pred_kernels, true_kernels, valid=None, scales=(1, 2, 4, 8)):
    """Masked multi-scale L1 distance between kernels (per kernel in [0, 2]).

    ``pred_kernels [B, h, w, K, K]`` (K = ``kernel_size``), ``true_kernels [B, h, w, T, T]`` (T = 75 from the
    simulator), ``valid [B, h, w]``. The smaller of the two is zero-padded to the larger, centred (both are
    centred on their centroid), so truth mass outside the predicted support counts as error. The L1 is averaged
    over sum-pooled versions (``scales``): at full resolution two thin trajectories a pixel apart share no mass
    (L1 ~ 2, no useful signal); at coarser scales the distance falls smoothly as the shapes approach.
    Returns the mean over valid kernels (0 when nothing is valid).
    """
    kp, kt = pred_kernels.shape[-1], true_kernels.shape[-1]
    if kp < kt:
        p = (kt - kp) // 2
        pred_kernels = F.pad(pred_kernels, (p, p, p, p))
    elif kt < kp:
        p = (kp - kt) // 2
        true_kernels = F.pad(true_kernels, (p, p, p, p))
    diff = (pred_kernels - true_kernels.to(pred_kernels.dtype)).flatten(0, -3)[:, None]  # [N, 1, S, S]
    err = 0
    for s in scales:
        pad = (-diff.shape[-1]) % s
        d = F.pad(diff, (0, pad, 0, pad)) if pad else diff
        d = F.avg_pool2d(d, s) * (s * s) if s > 1 else d  # sum pooling keeps the mass
        err = err + d.abs().sum(dim=(-1, -2, -3))
    err = (err / len(scales)).view(pred_kernels.shape[:-2])
    if valid is None:
        return err.mean()
    valid = valid.to(err.dtype)
    return (err * valid).sum() / valid.sum().clamp_min(1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` > 0 (mask broadcast over leading channel dims); 0 with a graph if none valid."""
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)



@dataclass
class LossConfig:
    freq_loss_weight: float = 0.05
    motion_loss_weight: float = 0.1
    kernel_loss_weight: float = 0.1
    diffusion_loss_weight: float = 1.0
    residual_scale: float = 1.0
    num_train_timesteps: int = 1000
    prediction_type: str = "sample"

    @classmethod
    def from_args(cls, args, residual_scale: float, num_train_timesteps: int,
                  prediction_type: str = "sample") -> "LossConfig":
        return cls(args.freq_loss_weight, args.motion_loss_weight, args.kernel_loss_weight,
                   args.diffusion_loss_weight, residual_scale, num_train_timesteps, prediction_type)


class GLOWTrainingModule(torch.nn.Module):
    """motion estimator -> pre-reconstruction -> transformer on the residual, with all the training losses.

    Gradient routing (why): the diffusion target `sharp - prerecon` uses a *detached* pre-reconstruction — otherwise
    the flow-matching loss could shrink its own target by pulling the pre-reconstruction towards whatever makes the
    residual easy to predict instead of towards the sharp image. The conditioning features are NOT detached (they
    exist to serve the backbone, the "domain alignment"), the motion field given to the backbone IS detached (it is
    supervised by the simulator's truth and must keep its physical meaning for the app's motion view).
    """

    def __init__(self, motion_estimator, prereconstruction, transformer, loss_config: LossConfig, conventions):
        super().__init__()
        self.motion_estimator = motion_estimator
        self.prereconstruction = prereconstruction
        self.transformer = transformer
        self.loss_config = loss_config
        # the pipeline class: its residual_to_latents / transformer_input are the inference conventions
        self.conventions = conventions

    def forward(self, batch: dict, text_embeds=None, text_mask=None, noise=None, sigmas=None,
                use_diffusion: bool = False):
        cfg = self.loss_config
        blurry, sharp = batch["blurry"], batch["sharp"]
        est = self.motion_estimator(blurry)
        pre = self.prereconstruction(blurry, est.kernels, est.motion)
        losses = {
            "pixel": charbonnier(pre.image, sharp),
            "freq": frequency_loss(pre.image, sharp),
            "motion": motion_loss(est.motion, batch["motion"], batch["motion_valid"]),
            "kernel": kernel_loss(est.kernels, batch["kernel"], batch["kernel_valid"]),
        }
        total = (losses["pixel"] + cfg.freq_loss_weight * losses["freq"] + cfg.motion_loss_weight * losses["motion"]
                 + cfg.kernel_loss_weight * losses["kernel"])
        if use_diffusion:
            x0 = self.conventions.residual_to_latents(sharp - pre.image.detach(), cfg.residual_scale)
            s = sigmas.view(-1, 1, 1, 1).to(x0.dtype)
            x_t = (1.0 - s) * x0 + s * noise
            hidden = self.conventions.transformer_input(x_t, pre.features, est.motion.detach())
            prediction = self.transformer(hidden, encoder_hidden_states=text_embeds, encoder_attention_mask=text_mask,
                                          timestep=sigmas * cfg.num_train_timesteps, return_dict=False)[0]
            target = x0 if cfg.prediction_type == "sample" else noise - x0  # see velocity_from_prediction
            losses["diffusion"] = F.mse_loss(prediction.float(), target.float())
            total = total + cfg.diffusion_loss_weight * losses["diffusion"]
        losses["total"] = total
        return total, {k: v.detach() for k, v in losses.items()}


def step_generator(seed: int, step: int, process_index: int, micro_step: int) -> torch.Generator:
    """Noise, sigmas and prompt dropout depend only on (seed, step, process, micro-step): resumes are exact."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 131 + process_index) * 17 + micro_step)


def sample_diffusion_inputs(args, x0_shape, gen: torch.Generator, device=None):
    """(noise on `device`, sigmas on the CPU). On an accelerator the noise is drawn there, from a generator seeded by
    `gen`'s seed: 12 M normal numbers per batch of 64 cost the main process ~50 ms on a CPU core, and a step waits."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if args.weighting_scheme == "few_step":
        # The pipeline runs 1-4 steps on sigmas linspace(1, 0, n + 1)[:-1]; logit-normal sampling almost never draws
        # sigma = 1, the point the default single step starts from, so train on the visited sigmas themselves.
        n = torch.randint(1, args.max_inference_steps + 1, (x0_shape[0],), generator=gen)
        k = (torch.rand(x0_shape[0], generator=gen) * n).floor()
        sigmas = 1.0 - k / n
    else:
        sigmas = compute_density_for_timestep_sampling(args.weighting_scheme, x0_shape[0], logit_mean=args.logit_mean,
                                                       logit_std=args.logit_std, mode_scale=args.mode_scale,
                                                       generator=gen)
    device = torch.device(device or "cpu")
    if device.type == "cpu":
        noise = torch.randn(x0_shape, generator=gen)
    else:
        noise = torch.randn(x0_shape, generator=torch.Generator(device).manual_seed(gen.initial_seed()), device=device)
    return noise, sigmas.clamp(1e-3, 1.0)


def set_trainable(module: GLOWTrainingModule, freeze: str) -> list[str]:
    frozen = [n.strip() for n in (freeze or "").split(",") if n.strip()]
    unknown = [n for n in frozen if n not in COMPONENTS]
    if unknown:
        raise ValueError(f"--freeze: unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}")
    for name in COMPONENTS:
        getattr(module, name).requires_grad_(name not in frozen)
    return frozen
