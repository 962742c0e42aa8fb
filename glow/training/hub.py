"""The exported pipeline folder, its model card and the Hub push."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def save_pipeline_folder(pipeline, folder: str | Path) -> Path:
    """`save_pretrained` into `<folder>.tmp`, then rename: a half-written pipeline folder never replaces a good one."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(str(tmp), safe_serialization=True)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def provenance(stage: str, global_step: int, preset: str, ema: bool, base_model: str | None) -> str:
    """What the weights are, in one line: the model card's "Weights" line (not a pipeline config entry)."""
    return (f"{stage}: {global_step} steps{' (EMA weights)' if ema else ''}, preset {preset}"
            + (f", from {base_model}" if base_model else ""))


def write_model_card(folder: str | Path, args, *, stage: str, global_step: int, metrics: dict | None,
                     data_summary: list[str], base_model: str | None = None, weights: str = "") -> Path:
    """README.md for the pipeline folder: huggingface_hub's ModelCard with its YAML metadata completed by diffusers'
    populate_model_card (library name, tags). ``weights``: the provenance line (``provenance(...)``)."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        license="apache-2.0", pipeline_tag="image-to-image",
        base_model=base_model if base_model and not Path(base_model).exists() else None,
    )
    repo = args.hub_model_id or "<user>/<repo>"
    metric_rows = "\n".join(
        f"| {k.split('/', 1)[-1]} | {v:.4f} |" for k, v in sorted((metrics or {}).items()) if isinstance(v, float)
    ) or "| (no validation run) | |"
    data_lines = "\n".join(f"  - {line}" for line in data_summary) or "  - (none recorded)"
    effective_batch = args.train_batch_size * args.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", 1))
    prerecon_config = Path(folder) / "prereconstruction" / "config.json"
    use_wiener = not prerecon_config.is_file() or json.loads(prerecon_config.read_text()).get("use_wiener", True)
    first_stage = ("U-Net with motion-guided Wiener\ndeconvolution" if use_wiener else
                   "U-Net (this model has its Wiener\ndeconvolution branch switched off)")
    opening = (f"A NAFNet-style pre-reconstruction {first_stage} produces a first estimate"
               if not (Path(folder) / "blind_deconvolution").is_dir() else
               "Blind deconvolution estimates the photo's blur kernel by optimisation and deconvolves the photo (when\n"
               f"it shows a reliable blur), a NAFNet-style pre-reconstruction {first_stage} cleans the result")
    content = f"""---
{card_data.to_yaml()}
---

# GLOWDeblur ({args.preset} preset, {stage})

GLOWDeblur removes blur (camera shake, object motion, defocus) from real photos. {opening}, and a small
`SanaTransformer2DModel` refines the residual in 1-4 flow-matching steps, guided by the motion field and a text
prompt (MiniLM embeddings).

**Weights:** {weights or "(not recorded)"}

## Training

- Stage: **{stage}**{f" starting from `{base_model}`" if base_model else ""}
- Steps: {global_step} (effective batch {effective_batch}, resolution {args.resolution}, learning rate
  {args.learning_rate}, scheduler `{args.lr_scheduler}`, EMA {"on" if args.use_ema else "off"})
- Data:
{data_lines}

## Validation (measured by the training script at step {global_step})

Validation set: `{args.validation_data_dir}` (first {args.num_validation_images} images, {args.validation_resolution}
px centre crops; real pairs when the folder is paired, else sharp images blurred by the simulator with the fixed seed
{args.validation_seed}). PSNR in dB / SSIM on uint8 RGB (GoPro convention) for the blurry input, the pipeline at its
default settings and the pre-reconstruction alone.

| metric | value |
|---|---|
{metric_rows}

## How to load

```python
from diffusers import DiffusionPipeline
from PIL import Image

pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)
result = pipe(image=Image.open("blurry.jpg")).images[0]
```

## Intended use

Restoring photos blurred by camera shake, moving subjects or mild defocus; a research/demo model that runs on a
laptop CPU.

## Limitations

- Small model trained on a CPU budget: it is far below large GPU-trained deblurring models in PSNR.
- The diffusion refinement can invent plausible texture; use `fidelity=1` (pre-reconstruction only) when exactness
  matters (documents, evidence).
- Trained on natural photos; heavy noise, extreme blur (> ~60 px), text-heavy images and non-photographic content are
  out of distribution.
"""
    card = populate_model_card(ModelCard(content), tags=["image-deblurring", "image-restoration", "glowdeblur",
                                                          stage.lower()])
    path = Path(folder) / "README.md"
    card.save(str(path))
    return path


def push_folder_to_hub(folder: str | Path, args) -> str:
    """create_repo + upload_folder; raises RuntimeError with a clear message when offline (the folder stays)."""
    from huggingface_hub import create_repo, upload_folder

    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/glowdeblur-small)")
    try:
        repo_id = create_repo(args.hub_model_id, token=args.hub_token, private=args.hub_private, exist_ok=True).repo_id
        upload_folder(repo_id=repo_id, folder_path=str(folder), token=args.hub_token,
                      commit_message="Upload GLOWDeblur pipeline", ignore_patterns=["*.tmp", "*.tmp/*"])
    except Exception as err:  # offline, bad token, ...: say so, the local folder is complete
        raise RuntimeError(
            f"Pushing to the Hub failed ({type(err).__name__}: {err}). The complete pipeline folder and model card "
            f"are at {folder}; upload it later with `hf upload {args.hub_model_id} {folder}`."
        ) from err
    return f"https://huggingface.co/{repo_id}"
