"""The repository itself: what git tracks stays small enough to clone fast and to travel to a lent GPU (64 MiB), and
the README, which is also the Hugging Face Space card, keeps a valid Space config."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "glow/default_model/"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")  # torch.save / accelerate state: pickles


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [Path(p) for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def test_no_large_files_or_pickles_outside_the_shipped_pipeline():
    files = tracked_files()
    outside = [p for p in files if not p.as_posix().startswith(SHIPPED)]
    large = [f"{p} ({(ROOT / p).stat().st_size / 2**20:.1f} MB)" for p in outside
             if (ROOT / p).stat().st_size > 10 * 2**20]
    pickles = [str(p) for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    assert not large, f"files over 10 MB tracked outside {SHIPPED}: {large}"
    assert not pickles, f"pickled files tracked (weights go in safetensors): {pickles}"


def test_training_runs_track_only_arguments_and_logs():
    runs = [p for p in tracked_files() if p.parts[:2] == ("train", "runs")]
    heavy = [str(p) for p in runs if p.suffix in (".safetensors", ".png") or any("checkpoint-" in s for s in p.parts)]
    assert not heavy, f"checkpoints or images tracked under train/runs: {heavy}"
    total = sum((ROOT / p).stat().st_size for p in tracked_files())
    assert total < 40 * 2**20, f"the tracked tree is {total / 2**20:.1f} MiB (it must travel in 64 MiB with a pack)"


def test_readme_front_matter_is_the_space_config():
    # the README is also the Hugging Face Space's card: its YAML block must close and name the app and Gradio version
    from huggingface_hub import metadata_load

    meta = metadata_load(ROOT / "README.md")
    assert meta is not None, "README.md has no closed YAML front matter (--- ... ---)"
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio=="))
    assert meta["sdk_version"] == pinned.split("==")[1]
    assert (ROOT / "README.md").read_text().split("---\n", 2)[2].lstrip().startswith("# GLOWDeblur")
