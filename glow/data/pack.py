"""A compact training pack that travels with the working tree to a machine without `../shared` (a lent GPU).

    python -m glow.data.pack ../shared/data packs/train --max_mb 35

writes into OUT_DIR (an ignored folder, carried by the device call):
- ``sharp/<subset>/<name>.jpg``: every sharp training photo, longest side at most ``--sharp_max_side``, re-encoded
  (JPEG ``--quality``): the training crops are 256 px, and a downscaled photo is only sharper;
- ``pairs/``: the real blurry/sharp pairs (``train/pairs``, same layout), full size, JPEG ``--pairs_quality`` 4:4:4;
- ``frames/<clip>/``: each frame clip without its held-out last ``--frames_holdout`` frames (they are the
  validation set), every frame downscaled by ``--frames_scale``: averaging still needs consecutive frames, so the
  sequence is kept whole and only its size shrinks;
- ``val/``: centre crops (``--val_size``) of the first ``--val_count`` validation images, PNG, exactly what
  training validation crops from the originals;
- ``text_embeddings.safetensors``: the frozen text encoder's token embeddings of the simulator's most frequent
  descriptions and of the empty prompt. The device has no text encoder and the encoder (90 MB) does not fit the
  64 MiB that travels; the training script's ``--text_embeddings`` reads this file, and a description not in it
  trains as the empty prompt (the log counts how often);
- ``pack.json``: what went in, with sizes.

The pack is for training only; validation against the full sets (`train/evaluate.py`) stays on this machine.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from PIL import Image

from .datasets import list_images

FRAME_PROMPT = "motion blur from averaging {} video frames"  # as glow.data.datasets.FrameFolderDataset writes it


def _save_jpeg(src: Path, dst: Path, max_side: int, quality: int, scale: float = 1.0, subsampling: int = 2) -> int:
    from glow.io import load_image

    image = load_image(src).convert("RGB")  # EXIF rotation, modes and 16-bit handled as for every other input
    w, h = image.size
    factor = min(scale, max_side / max(w, h)) if max_side else scale
    if factor < 1.0:
        image = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, quality=quality, subsampling=subsampling)  # 2: 4:2:0, 0: 4:4:4
    return dst.stat().st_size


def sample_descriptions(count: int, seed: int = 0, simulator_config=None) -> collections.Counter:
    """How often the simulator writes each description, over `count` draws (on a small random image: the text
    depends on the blur and the camera draws, not on the picture)."""
    from .simulator import BlurSimulator

    simulator = BlurSimulator(simulator_config, seed=seed)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return collections.Counter(simulator(image)["text"] for _ in range(count))


def write_text_embeddings(prompts: list[str], path: Path, model_path: str | None = None) -> dict:
    """Token embeddings of `prompts` as the pipeline encodes them, fp16, one row per token (no padding):
    ``embeddings [sum(lengths), 384]``, ``lengths [N]``; the prompts are in the file's metadata."""
    from safetensors.torch import save_file

    import glow
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipeline = GLOWDeblurPipeline.from_pretrained(model_path or glow.DEFAULT_MODEL_PATH)
    rows, lengths = [], []
    for start in range(0, len(prompts), 64):
        emb, mask = pipeline.encode_prompt(prompts[start : start + 64], device="cpu")
        for e, m in zip(emb, mask):
            n = int(m.sum())
            rows.append(e[:n].half())
            lengths.append(n)
    save_file({"embeddings": torch.cat(rows).contiguous(), "lengths": torch.tensor(lengths, dtype=torch.int32)},
              str(path), metadata={"prompts": json.dumps(prompts), "text_encoder": pipeline.config.text_encoder_id})
    return {"prompts": len(prompts), "tokens": int(sum(lengths)), "bytes": path.stat().st_size}


def load_text_embeddings(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The file `write_text_embeddings` wrote -> {prompt: (embeddings [T, 384] float32, mask [T])}."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
        embeddings, lengths = f.get_tensor("embeddings").float(), f.get_tensor("lengths").tolist()
    if len(prompts) != len(lengths) or sum(lengths) != embeddings.shape[0]:
        raise ValueError(f"{path}: {len(prompts)} prompts, {len(lengths)} lengths and {embeddings.shape[0]} rows "
                         "do not agree (a damaged file?)")
    out, start = {}, 0
    for prompt, n in zip(prompts, lengths):
        out[prompt] = (embeddings[start : start + n], torch.ones(n, dtype=torch.long))
        start += n
    return out


def build_pack(data_root: str | Path, out_dir: str | Path, *, max_mb: float = 35.0, sharp_max_side: int = 384,
               quality: int = 85, pairs_quality: int = 95, frames_scale: float = 0.5, frames_holdout: int = 60,
               val_count: int = 8, val_size: int = 256, prompt_samples: int = 20000, max_prompts: int = 400,
               model_path: str | None = None, seed: int = 0) -> dict:
    data_root, out_dir = Path(data_root), Path(out_dir)
    sharp_root, frames_root = data_root / "train" / "sharp", data_root / "train" / "frames"
    val_root = data_root / "val" / "sharp"
    if not sharp_root.is_dir():
        raise FileNotFoundError(f"{sharp_root} not found: DATA_ROOT must hold train/sharp (and optionally "
                                "train/frames, val/sharp)")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"source": str(data_root), "settings": dict(sharp_max_side=sharp_max_side, quality=quality,
                                                         pairs_quality=pairs_quality,
                                                         frames_scale=frames_scale, frames_holdout=frames_holdout,
                                                         val_count=val_count, val_size=val_size)}
    sizes = collections.Counter()
    skipped = []
    for path in list_images(sharp_root):
        dst = out_dir / "sharp" / path.relative_to(sharp_root).with_suffix(".jpg")
        try:
            sizes["sharp"] += _save_jpeg(path, dst, sharp_max_side, quality)
            sizes["sharp_files"] += 1
        except (OSError, ValueError) as err:  # a damaged photo must not stop the pack: it is left out and named
            skipped.append(f"{path}: {err}")
    pairs_root = data_root / "train" / "pairs"
    if pairs_root.is_dir():  # real pairs, full size (downscaling would change their blur); JPEG near-lossless
        for path in list_images(pairs_root):
            dst = out_dir / "pairs" / path.relative_to(pairs_root).with_suffix(".jpg")
            sizes["pairs"] += _save_jpeg(path, dst, 0, pairs_quality, subsampling=0)
            sizes["pairs_files"] += 1
    if frames_root.is_dir():
        from glow.training import find_frame_clips

        for clip in find_frame_clips([str(frames_root)]):
            frames = list_images(clip, recursive=False)
            for path in frames[: max(0, len(frames) - frames_holdout)]:
                sizes["frames"] += _save_jpeg(path, out_dir / "frames" / clip.name / (path.stem + ".jpg"), 0,
                                              quality, scale=frames_scale)
                sizes["frames_files"] += 1
    if val_root.is_dir() and val_count > 0:
        from glow.io import center_crop, image_to_tensor, to_pil

        for path in list_images(val_root)[:val_count]:
            dst = out_dir / "val" / (path.stem + ".png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            to_pil(center_crop(image_to_tensor(path), val_size, pad=True)).save(dst)
            sizes["val"] += dst.stat().st_size
            sizes["val_files"] += 1
    if max_prompts > 0:
        counts = sample_descriptions(prompt_samples, seed=seed)
        frame_prompts = [FRAME_PROMPT.format(k) for k in range(1, 32, 2)]
        chosen = [""] + frame_prompts + [p for p, _ in counts.most_common(max_prompts)]
        chosen = list(dict.fromkeys(chosen))  # unique, in order
        covered = sum(counts[p] for p in chosen) / max(1, sum(counts.values()))
        info = write_text_embeddings(chosen, out_dir / "text_embeddings.safetensors", model_path)
        sizes["text"] += info["bytes"]
        report["text_embeddings"] = {**info, "descriptions_sampled": prompt_samples,
                                     "distinct_descriptions": len(counts),
                                     "share_of_simulated_samples_covered": round(covered, 4)}
    parts = ("sharp", "pairs", "frames", "val", "text")
    total = sum(sizes[k] for k in parts)
    report.update(files={k: sizes[f"{k}_files"] for k in parts[:-1]},
                  megabytes={k: round(sizes[k] / 2**20, 2) for k in parts},
                  total_megabytes=round(total / 2**20, 2), skipped=skipped)
    (out_dir / "pack.json").write_text(json.dumps(report, indent=2))
    if total > max_mb * 2**20:
        raise ValueError(f"the pack is {total / 2**20:.1f} MB, over --max_mb {max_mb}: lower --sharp_max_side, "
                         f"--quality or --max_prompts, or raise --frames_holdout")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", help="The data folder (holds train/sharp, train/frames, val/sharp).")
    parser.add_argument("out_dir")
    parser.add_argument("--max_mb", type=float, default=35.0, help="Fail if the pack is larger (MiB).")
    parser.add_argument("--sharp_max_side", type=int, default=384)
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (4:2:0).")
    parser.add_argument("--pairs_quality", type=int, default=95, help="JPEG quality of the real pairs (4:4:4).")
    parser.add_argument("--frames_scale", type=float, default=0.5)
    parser.add_argument("--frames_holdout", type=int, default=60)
    parser.add_argument("--val_count", type=int, default=8)
    parser.add_argument("--val_size", type=int, default=256)
    parser.add_argument("--prompt_samples", type=int, default=20000)
    parser.add_argument("--max_prompts", type=int, default=400, help="0: no text embeddings file.")
    parser.add_argument("--model_path", default=None, help="Pipeline whose text encoder embeds the prompts.")
    args = parser.parse_args(argv)
    try:
        report = build_pack(**{k: v for k, v in vars(args).items()})
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("files", "megabytes", "total_megabytes")}
                     | {"text_embeddings": report.get("text_embeddings", {})}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
