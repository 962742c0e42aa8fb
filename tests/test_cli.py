"""glow-deblur (glow/cli.py) as a user runs it: real subprocesses, a tiny pipeline, folders made here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

ROOT = Path(__file__).resolve().parents[1]


def _photo(seed, h, w):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    img = np.stack([np.sin(x / (4 + c)) * np.cos(y / (5 + c)) for c in range(3)], -1) * 0.4 + 0.5
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from glow.presets import build_pipeline

    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def photos(tmp_path):
    """album/ with a nested folder, a grayscale PNG, an RGBA PNG, a rotated JPEG with an ICC profile and a bad file."""
    album = tmp_path / "album"
    (album / "day2" / "evening").mkdir(parents=True)
    Image.fromarray(_photo(0, 70, 90)).save(album / "a.jpg", quality=92)
    Image.fromarray(_photo(1, 64, 64)[..., 0]).save(album / "day2" / "gray.png")
    Image.fromarray(np.dstack([_photo(2, 60, 80), np.full((60, 80), 200, np.uint8)])).save(album / "day2" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_photo(3, 48, 96)).save(album / "day2" / "evening" / "rotated.jpg", exif=exif.tobytes(),
                                            icc_profile=icc, quality=92)
    (album / "day2" / "evening" / "notes.jpg").write_text("not a photo")
    return album, icc


def glow_deblur(args, tiny_model, launcher=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    cmd = (launcher or [sys.executable, "-m", "glow"]) + [str(a) for a in args] + ["--model", str(tiny_model)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_folder_run_mirrors_layout_reports_bad_files_and_resumes(photos, tiny_model, tmp_path):
    album, _ = photos
    out = tmp_path / "out"
    first = glow_deblur([album, "-o", out, "-r", "--report", out / "report.jsonl", "--save-kernel"], tiny_model)
    assert first.returncode == 1, first.stderr[-2000:]  # one file failed
    assert "failed: " in first.stderr and "notes.jpg" in first.stderr
    assert "done 4, skipped 0" in first.stdout and "failed 1" in first.stdout
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png") if not p.stem.endswith("_kernel"))
    assert outputs == ["a.png", "day2/evening/rotated.png", "day2/gray.png", "day2/rgba.png"]
    assert Image.open(out / "day2" / "gray.png").mode == "L" and Image.open(out / "day2" / "rgba.png").mode == "RGBA"
    assert Image.open(out / "a.png").size == (90, 70)
    records = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["width"] > 0 and "blur" in r for r in records)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave nothing behind
    stamp = (out / "a.png").stat().st_mtime_ns

    again = glow_deblur([album, "-o", out, "-r"], tiny_model)
    assert "done 0, skipped 4" in again.stdout and again.returncode == 1  # the bad file still fails
    assert (out / "a.png").stat().st_mtime_ns == stamp  # nothing rewritten

    redo = glow_deblur([album / "a.jpg", "-o", out, "--overwrite"], tiny_model)
    assert redo.returncode == 0 and "done 1, skipped 0, failed 0" in redo.stdout
    assert (out / "a.png").stat().st_mtime_ns != stamp


def test_exif_orientation_applied_and_reset_icc_kept_format_same(photos, tiny_model, tmp_path):
    album, icc = photos
    out = tmp_path / "out"
    proc = glow_deblur([album / "day2" / "evening" / "rotated.jpg", "-o", out, "--format", "same"], tiny_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = Image.open(out / "rotated.jpg")
    assert result.format == "JPEG" and result.size == (48, 96)  # upright: width and height swapped
    exif = result.getexif()
    assert exif[0x0112] == 1 and exif[0x010F] == "TestCam"
    assert result.info.get("icc_profile") == icc


def test_globs_and_refusing_to_overwrite_an_input(photos, tiny_model, tmp_path, capsys):
    album, _ = photos
    proc = glow_deblur([str(album / "day2" / "*.png"), "-o", album / "day2", "--format", "same"], tiny_model)
    assert proc.returncode == 1
    assert proc.stderr.count("would overwrite an input") == 2
    assert Image.open(album / "day2" / "gray.png").mode == "L"  # untouched
    from glow.cli import main  # nothing to load when no input exists: in-process is enough

    assert main([str(tmp_path / "nowhere"), str(tmp_path / "*.heic"), "-o", str(tmp_path / "o"),
                 "--model", str(tiny_model)]) == 1
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "no file matches this pattern" in err


def test_two_processes_split_a_folder_without_duplicates(tmp_path, tiny_model):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_photo(i, 40, 56)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    proc = glow_deblur([folder, "-o", out, "--report", out / "report.jsonl"], tiny_model,
                       launcher=["accelerate", "launch", "--multi_gpu", "--num_processes", "2",
                                 "--main_process_port", "29531", "-m", "glow.cli"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done 6, skipped 0, failed 0" in proc.stdout
    inputs = [json.loads(line)["input"] for line in (out / "report.jsonl").read_text().splitlines()]
    assert sorted(inputs) == sorted(str(p) for p in folder.glob("*.png"))  # each exactly once
    assert len(list(out.glob("*.png"))) == 6


def test_bad_inputs_each_get_a_line_and_the_rest_is_deblurred(tmp_path, tiny_model):
    folder, out = tmp_path / "dump", tmp_path / "out"
    folder.mkdir()
    img = _photo(5, 60, 80)
    Image.fromarray(img).save(folder / "ok.jpg")
    (folder / "text.jpg").write_text("not an image")
    (folder / "truncated.jpg").write_bytes((folder / "ok.jpg").read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    Image.fromarray(img[:1, :1]).save(folder / "one_pixel.png")
    Image.fromarray(img).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((img[..., 0].astype(np.uint16) * 257)).save(folder / "gray16.png")
    frames = [Image.fromarray(np.roll(img, 4 * i, axis=1)) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    out.mkdir()
    Image.fromarray(img).save(out / "ok.png")  # written by an earlier run: must stay as it is
    before = (out / "ok.png").read_bytes()
    proc = glow_deblur([folder, "-o", out], tiny_model)
    assert proc.returncode == 1
    for name in ("text.jpg", "truncated.jpg", "empty.jpg"):
        assert sum(name in line for line in proc.stderr.splitlines() if line.startswith("failed:")) == 1
    assert "done 4, skipped 1, failed 3" in proc.stdout
    assert (out / "ok.png").read_bytes() == before
    assert Image.open(out / "one_pixel.png").size == (1, 1) and Image.open(out / "cmyk.png").mode == "RGB"
    assert Image.open(out / "gray16.png").mode == "L" and Image.open(out / "animated.png").size == (80, 60)


def test_no_networks_writes_the_deconvolution_alone(tmp_path, tiny_model, capsys):
    """--no-networks: the same photo as the component alone gives, recorded in the report; refused together with
    --no-deconvolve (nothing would be left to do)."""
    import torch

    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    src, out = tmp_path / "p.png", tmp_path / "out"
    Image.fromarray(_photo(7, 72, 96)).save(src)
    proc = glow_deblur([src, "-o", out, "--no-networks", "--report", out / "r.jsonl"], tiny_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "r.jsonl").read_text())
    assert record["settings"]["networks"] == "never" and record["networks_weight"] == 0.0
    pipe = GLOWDeblurPipeline.from_pretrained(tiny_model)
    photo = torch.from_numpy(np.asarray(Image.open(src), np.float32) / 255).permute(2, 0, 1)
    expected = pipe.blind_deconvolution(photo[None]).image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255
    assert np.abs(np.asarray(Image.open(out / "p.png"), np.float32) - expected).max() <= 1.0
    from glow.cli import main  # refused before any model is loaded: in-process is enough

    assert main([str(src), "-o", str(tmp_path / "o2"), "--no-networks", "--no-deconvolve"]) == 2
    assert "--no-deconvolve" in capsys.readouterr().err and not (tmp_path / "o2").exists()
