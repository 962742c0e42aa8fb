"""Component configurations per size preset, and a builder for randomly initialised pipelines.

- ``tiny``: unit tests (runs in seconds).
- ``small``: the shipped size (CPU budget: <= 15 M parameters without the text encoder, ~<= 50 kMAC per pixel).
- ``large``: GPU scale (for a GPU training run; same code, wider/deeper).

``get_preset(name)`` returns ``{"motion_estimator": {...}, "prereconstruction": {...}, "transformer": {...},
"scheduler": {...}, "pipeline": {...}}``: keyword arguments for the component constructors (and pipeline config).
"""
import copy

LATENT_CHANNELS = 3 * 8 * 8  # pixel_unshuffle(residual, 8): lossless, 192 channels on the /8 token grid
TEXT_EMBED_DIM = 384  # all-MiniLM-L6-v2 token embeddings


def _transformer(heads, head_dim, layers, feature_channels, mlp_ratio=2.5):
    dim = heads * head_dim
    return dict(
        in_channels=LATENT_CHANNELS + feature_channels + 3,  # cat(x_t, aligned features, motion condition)
        out_channels=LATENT_CHANNELS,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=layers,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=head_dim,
        cross_attention_dim=dim,  # Sana projects captions to the inner dim, so these must match
        caption_channels=TEXT_EMBED_DIM,
        mlp_ratio=mlp_ratio,
        sample_size=64,  # unused: no absolute position embedding (interpolation_scale=None), any grid size works
        patch_size=1,
        interpolation_scale=None,
    )


_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0)

PRESETS = {
    "tiny": {
        "motion_estimator": dict(
            width=8, num_blocks_fine=1, num_blocks_coarse=1, input_downscale=4, num_basis=8, kernel_size=15
        ),
        "prereconstruction": dict(
            width=8, enc_blocks=(1, 1, 1), middle_blocks=1, dec_blocks=(1, 1, 1), feature_channels=16, wiener_tile=128
        ),
        "transformer": _transformer(heads=2, head_dim=16, layers=1, feature_channels=16),
        "scheduler": _SCHEDULER,
        # tests: small kernels, one hypothesis, a small region, few iterations
        "blind_deconvolution": dict(max_kernel_size=31, kernel_sizes=(31,), region_size=128, region_long_side=None,
                                    iterations=3),
        "pipeline": dict(residual_scale=10.0),
    },
    "small": {
        "motion_estimator": dict(
            width=24, num_blocks_fine=2, num_blocks_coarse=2, input_downscale=4, num_basis=36, kernel_size=41
        ),
        "prereconstruction": dict(
            width=16, enc_blocks=(1, 1, 1), middle_blocks=2, dec_blocks=(1, 1, 1), feature_channels=64, wiener_tile=128
        ),
        "transformer": _transformer(heads=4, head_dim=32, layers=4, feature_channels=64),
        "scheduler": _SCHEDULER,
        "blind_deconvolution": {},  # the defaults (measured: docs/deconvolution.md)
        "pipeline": dict(residual_scale=10.0),
    },
    "large": {
        # GPU scale. A latent AutoencoderDC could replace the lossless pixel-unshuffle here (change LATENT_CHANNELS
        # and encode the residual); the default stays lossless.
        "motion_estimator": dict(
            width=48, num_blocks_fine=4, num_blocks_coarse=4, input_downscale=2, num_basis=64, kernel_size=75
        ),
        "prereconstruction": dict(
            width=32, enc_blocks=(2, 2, 4), middle_blocks=6, dec_blocks=(2, 2, 2), feature_channels=128, wiener_tile=256
        ),
        "transformer": _transformer(heads=12, head_dim=48, layers=12, feature_channels=128),
        "scheduler": _SCHEDULER,
        "blind_deconvolution": {},
        "pipeline": dict(residual_scale=10.0),
    },
}


def get_preset(name):
    """Deep copy of the component configs of preset ``name`` ("tiny", "small" or "large")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def apply_overrides(cfg, overrides):
    """``cfg`` with ``overrides`` (``{"component": {"key": value}}``, e.g. from a JSON flag) merged in, checked."""
    cfg = copy.deepcopy(cfg)
    for component, values in (overrides or {}).items():
        if component not in cfg or not isinstance(values, dict):
            raise ValueError(f"override {component!r}: expected one of {sorted(cfg)} mapping to a dict of settings")
        cfg[component].update(values)
    return cfg


def build_components(preset="small", seed=0):
    """Randomly initialised components (dict of name -> module/scheduler) for ``preset`` (a name or a dict)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

    from .models.blind_deconvolution import BlindDeconvolution
    from .models.motion_estimator import MotionEstimator
    from .models.prereconstruction import PreReconstructionUNet

    cfg = get_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    if seed is not None:
        torch.manual_seed(seed)
    return {
        "motion_estimator": MotionEstimator(**cfg["motion_estimator"]),
        "prereconstruction": PreReconstructionUNet(**cfg["prereconstruction"]),
        "transformer": SanaTransformer2DModel(**cfg["transformer"]),
        "scheduler": FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        # no weights: optimisation settings only; absent from presets saved before it existed
        "blind_deconvolution": BlindDeconvolution(**cfg["blind_deconvolution"]) if "blind_deconvolution" in cfg else None,
    }


def build_pipeline(preset="small", seed=0, text_encoder=None, tokenizer=None, **pipeline_config):
    """A full ``GLOWDeblurPipeline`` with random weights.

    ``pipeline_config`` overrides the preset's pipeline config (e.g. ``residual_scale``).
    """
    from .pipeline_glowdeblur import GLOWDeblurPipeline

    cfg = get_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    components = build_components(cfg, seed=seed)
    config = {**cfg.get("pipeline", {}), **pipeline_config}
    if isinstance(preset, str):
        config.setdefault("preset", preset)
    return GLOWDeblurPipeline(**components, text_encoder=text_encoder, tokenizer=tokenizer, **config)


def count_parameters(pipe):
    """Parameters per component (text encoder excluded unless attached) and the total."""
    counts = {}
    for name in ("motion_estimator", "prereconstruction", "transformer"):
        counts[name] = sum(p.numel() for p in getattr(pipe, name).parameters())
    counts["total"] = sum(counts.values())
    return counts


if __name__ == "__main__":
    # python -m glow.presets --preset small --out glow/default_model   (writes a RANDOMLY initialised pipeline)
    import argparse

    parser = argparse.ArgumentParser(description="Save a randomly initialised GLOWDeblur pipeline folder.")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipe = build_pipeline(args.preset, seed=args.seed)
    pipe.save_pretrained(args.out)
    print(f"saved untrained '{args.preset}' pipeline to {args.out}: {count_parameters(pipe)}")
