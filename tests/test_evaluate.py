"""glow.metrics against known values and scikit-image, and train/evaluate.py end to end on tiny folders."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from glow import metrics

ROOT = Path(__file__).resolve().parents[1]


def _smooth_image(seed=0, size=(96, 96)):
    rng = np.random.default_rng(seed)
    image = gaussian_filter(rng.random((*size, 3)), (2, 2, 0))
    return ((image - image.min()) / (image.max() - image.min()) * 255 + 0.5).astype(np.uint8)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    image = _smooth_image()
    assert metrics.psnr(image, image) == math.inf
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.realblur_psnr_ssim(image, image)[1] == pytest.approx(1.0, abs=1e-6)


def test_known_mse_gives_known_psnr():
    target = np.full((16, 16, 3), 100, np.uint8)
    output = target.copy()
    output[::2] += 10  # half the pixels off by 10 -> MSE 50
    assert metrics.psnr(output, target) == pytest.approx(10 * math.log10(255**2 / 50.0), abs=1e-9)


def test_psnr_ssim_match_skimage_and_accept_tensors_and_pil():
    target, output = _smooth_image(0), _smooth_image(1)
    assert metrics.psnr(output, target) == pytest.approx(peak_signal_noise_ratio(target, output, data_range=255))
    expected = structural_similarity(target, output, channel_axis=-1, data_range=255)
    assert metrics.ssim(output, target) == pytest.approx(expected)
    as_tensor = torch.from_numpy(output).permute(2, 0, 1).float() / 255.0  # [3,H,W] in [0,1] round-trips exactly
    assert metrics.psnr(as_tensor, Image.fromarray(target)) == pytest.approx(metrics.psnr(output, target))
    assert metrics.batch_psnr(as_tensor[None], torch.from_numpy(target).permute(2, 0, 1)[None] / 255.0) == [
        pytest.approx(metrics.psnr(output, target))
    ]
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(output[:10], target)


def test_blur_effect_is_lower_for_sharper_images():
    rng = np.random.default_rng(0)
    sharp = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    blurry = gaussian_filter(sharp.astype(float), (2, 2, 0)).astype(np.uint8)
    assert metrics.blur_effect(sharp) < metrics.blur_effect(blurry)


@pytest.mark.parametrize("dy,dx", [(3, -2), (-4, 5)])
def test_realblur_alignment_recovers_an_integer_shift(dy, dx):
    big = _smooth_image(2, (140, 140))
    target = big[20:116, 20:116]
    output = big[20 - dy : 116 - dy, 20 - dx : 116 - dx]  # output(y, x) = target(y - dy, x - dx)
    aligned, masked_target, mask, warp = metrics.realblur_align(output, target)
    # The warp maps target coordinates into the output image: the centre moves by (dx, dy).
    centre = warp @ np.array([48.0, 48.0, 1.0])
    centre = centre[:2] / centre[2]
    assert centre == pytest.approx([48.0 + dx, 48.0 + dy], abs=0.15)
    assert mask.min() == 0 and mask.mean() > 0.8  # the border the shift uncovers is masked out
    unaligned = metrics.psnr(output, target)
    aligned_psnr, aligned_ssim = metrics.realblur_psnr_ssim(output, target)
    assert aligned_psnr > max(28.0, unaligned + 10) and aligned_ssim > 0.97


# ------------------------------------------------------------------------------------------- train/evaluate.py e2e
def _write_pairs(blur_dir: Path, sharp_dir: Path, names, seed: int, size=64):
    blur_dir.mkdir(parents=True, exist_ok=True)
    sharp_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sharp = _smooth_image(seed + i, (size, size))
        blurry = gaussian_filter(sharp.astype(float), (1.5, 1.5, 0)).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(sharp).save(sharp_dir / name)
        Image.fromarray(blurry).save(blur_dir / name)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    from glow.presets import build_pipeline

    folder = tmp_path_factory.mktemp("tiny_pipeline")
    build_pipeline("tiny").save_pretrained(folder)
    return folder


def _evaluate_module():
    """train/evaluate.py imported under its own name (a pip package called `evaluate` may exist)."""
    import importlib.util

    if "glow_train_evaluate" not in sys.modules:
        spec = importlib.util.spec_from_file_location("glow_train_evaluate", ROOT / "train" / "evaluate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["glow_train_evaluate"]


def _run_evaluate(*args, timeout=240):
    command = [sys.executable, str(ROOT / "train" / "evaluate.py"), *map(str, args), "--threads", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_pipeline_dir):
    """One run of the script over every kind of source, all rows, RealBlur convention on."""
    root = tmp_path_factory.mktemp("eval_data")
    _write_pairs(root / "plain" / "blur", root / "plain" / "sharp", ["a.png", "b.png"], seed=0)
    for i, seq in enumerate(["GOPR0001_00_00", "GOPR0002_00_00"]):  # GoPro layout: <seq>/blur + <seq>/sharp
        _write_pairs(root / "gopro" / seq / "blur", root / "gopro" / seq / "sharp", ["000001.png"], seed=10 + i)
    (root / "frames").mkdir()
    base = _smooth_image(20, (64, 96))
    for i in range(12):  # a panning "video": the last 10 frames give one 9-frame validation pair
        Image.fromarray(np.ascontiguousarray(base[:, i : i + 64])).save(root / "frames" / f"{i:06d}.png")
    (root / "real").mkdir()
    Image.open(root / "plain" / "blur" / "a.png").save(root / "real" / "a.png")
    (root / "real" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = root / "out"
    result = _run_evaluate(
        "--model", tiny_pipeline_dir, "--data", root / "plain", "--data", root / "gopro",
        "--synthetic", root / "plain" / "sharp", "--synthetic_crop", 48, "--frames", root / "frames",
        "--frames_last", 10, "--no_reference", root / "real", "--ablations", "all",
        "--realblur_align", "--max_images", 2, "--output_dir", out,
    )
    return root, out, result


def test_evaluate_writes_every_row_with_finite_numbers(evaluation):
    root, out, result = evaluation
    report = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert markdown.strip() in result.stdout
    kinds = [source["kind"] for source in report["sources"]]
    assert kinds == ["paired", "paired", "synthetic", "frames", "no_reference"]
    assert [s["images"] for s in report["sources"]] == [2, 2, 2, 1, 1]
    skipped = report["sources"][-1]["skipped"]  # an unreadable file is reported, never replaced or fatal
    assert len(skipped) == 1 and "broken.jpg" in skipped[0] and "1 unreadable files skipped" in markdown
    assert "layout gopro" in report["sources"][1]["note"]
    expected_rows = ["input", "full", "prerecon", "no_motion", "no_deconv", "deconv_only", "networks_always",
                     "semantic", "steps1", "steps2", "steps4", "fidelity0", "fidelity0.5"]
    for source in report["sources"]:
        assert list(source["rows"]) == expected_rows
        gt_keys = ["psnr", "ssim", "psnr_realblur", "ssim_realblur"] if source["kind"] != "no_reference" else []
        for name, row in source["rows"].items():
            assert row["label"] in markdown
            for key in gt_keys + ["blur_effect"]:
                assert isinstance(row[key], float) and math.isfinite(row[key]), (source["name"], name, key)
            if name == "input":
                assert row["seconds_per_megapixel"] is None
            else:
                assert row["seconds_per_megapixel"] > 0 and row["peak_rss_mib"] > 50
                assert row["cpu_seconds_per_megapixel"] > 0
        rows = source["rows"]
        # defaults are 1 step and fidelity 0: those rows reuse the full model's call rather than rerun it
        assert rows["steps1"]["same_call_as"] == "full" and rows["fidelity0"]["same_call_as"] == "full"
        assert rows["steps1"]["per_image"] == rows["full"]["per_image"]
        # fidelity 0.5 lies between the pre-reconstruction and the full refinement (output is linear in fidelity)
        if gt_keys:
            low, high = sorted([rows["full"]["psnr"], rows["prerecon"]["psnr"]])
            assert low - 0.5 <= rows["fidelity0.5"]["psnr"] <= high + 0.5
            assert rows["no_motion"]["per_image"] != rows["full"]["per_image"]


def test_blurry_input_row_equals_a_direct_computation(evaluation):
    root, out, _ = evaluation
    report = json.loads((out / "results.json").read_text())
    floor = report["sources"][0]["rows"]["input"]
    expected_psnr, expected_ssim = [], []
    for name in ["a.png", "b.png"]:
        blurry = np.asarray(Image.open(root / "plain" / "blur" / name))
        sharp = np.asarray(Image.open(root / "plain" / "sharp" / name))
        expected_psnr.append(peak_signal_noise_ratio(sharp, blurry, data_range=255))
        expected_ssim.append(structural_similarity(sharp, blurry, channel_axis=-1, data_range=255))
    assert [item["name"] for item in floor["per_image"]] == ["blur/a.png", "blur/b.png"]
    assert floor["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-9)
    assert floor["ssim"] == pytest.approx(np.mean(expected_ssim), abs=1e-9)
    no_reference = report["sources"][-1]["rows"]["input"]
    assert no_reference["blur_effect"] == pytest.approx(metrics.blur_effect(Image.open(root / "real" / "a.png")))


def test_synthetic_and_frame_pairs_are_deterministic(evaluation, tiny_pipeline_dir):
    root, out, _ = evaluation
    evaluate = _evaluate_module()

    report = json.loads((out / "results.json").read_text())
    synthetic = evaluate.synthetic_source(str(root / "plain" / "sharp"), 48, 0, 2)
    first, again = synthetic.load(1), synthetic.load(1)
    assert first.blurry.shape == (3, 48, 48) and torch.equal(first.blurry, again.blurry) and first.text
    assert report["sources"][2]["rows"]["input"]["per_image"][1]["psnr"] == pytest.approx(
        metrics.psnr(first.blurry, first.sharp)
    )
    frames = evaluate.frames_source(str(root / "frames"), 10, 0, 0)
    pair = frames.load(0)
    assert frames.count == 1 and pair.name == "000006.png"  # frames 2..10 averaged, the middle one is the target
    assert torch.equal(pair.blurry, frames.load(0).blurry)


def test_without_motion_guidance_zeroes_the_motion_field_and_is_undone(tiny_pipeline_dir):
    evaluate = _evaluate_module()

    pipe = evaluate.load_pipeline(str(tiny_pipeline_dir))
    image = torch.from_numpy(_smooth_image(3, (64, 64))).permute(2, 0, 1).float() / 255
    normal = pipe(image, fidelity=1.0, output_type="pt")
    with evaluate.without_motion_guidance(pipe):
        ablated = pipe(image, fidelity=1.0, output_type="pt")
        assert pipe.prereconstruction.wiener(image[None], None) is not None
    assert torch.count_nonzero(ablated.motion_fields[0]) == 0
    assert torch.count_nonzero(normal.motion_fields[0]) > 0
    again = pipe(image, fidelity=1.0, output_type="pt")  # patches removed
    assert torch.equal(again.motion_fields[0], normal.motion_fields[0])
    assert "forward" not in vars(pipe.motion_estimator) and "wiener" not in vars(pipe.prereconstruction)


def test_bad_arguments_fail_clearly(tmp_path):
    command = [sys.executable, str(ROOT / "train" / "evaluate.py"), "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "give at least one source" in result.stderr
    result = subprocess.run(command + ["--no_reference", str(tmp_path), "--ablations", "steps3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown ablation rows ['steps3']" in result.stderr


def test_hide_and_reds_layouts_are_read_through_the_training_adapter(tmp_path):
    evaluate = _evaluate_module()
    hide = tmp_path / "HIDE_dataset"  # HIDE: test/<subset>/NAME.png, sharp GT/NAME.png
    _write_pairs(hide / "test" / "test-close-ups", hide / "GT", ["1fromGOPR0950.png"], seed=30)
    _write_pairs(hide / "test" / "test-long-shot", hide / "GT", ["9fromGOPR1024.png"], seed=31)
    reds = tmp_path / "REDS"  # REDS: val_blur/<seq>/*.png + val_sharp/<seq>/*.png ("test" has no GT: val is used)
    _write_pairs(reds / "val_blur" / "000", reds / "val_sharp" / "000", ["00000000.png", "00000001.png"], seed=32)
    for folder, layout, names in [
        (hide, "hide", ["test/test-close-ups/1fromGOPR0950.png", "test/test-long-shot/9fromGOPR1024.png"]),
        (reds, "reds", ["val_blur/000/00000000.png", "val_blur/000/00000001.png"]),
    ]:
        source = evaluate.paired_source(str(folder), "auto", 0)
        assert source.note == f"layout {layout}" and source.count == 2
        samples = [source.load(i) for i in range(2)]
        assert [s.name for s in samples] == names
        sharp_dir = folder / ("GT" if layout == "hide" else "val_sharp/000")
        expected = np.asarray(Image.open(sharp_dir / Path(names[1]).name))
        assert np.array_equal(metrics.to_uint8(samples[1].sharp), expected)


def test_eval_blur_size_measures_each_size_with_everything_else_fixed(tiny_pipeline_dir, tmp_path):
    sharp = tmp_path / "sharp"
    sharp.mkdir()
    for i in range(2):
        Image.fromarray(_smooth_image(40 + i, (80, 80))).save(sharp / f"s{i}.png")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "train" / "eval_blur_size.py"), "--model", str(tiny_pipeline_dir),
               "--sharp", str(sharp), "--crop", "64", "--lengths", "2,12", "--radii", "1,4", "--no_camera",
               "--threads", "1", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = [(r["kind"], r["size"]) for r in report["results"]]
    assert rows == [("linear_motion", 2.0), ("linear_motion", 12.0), ("defocus", 1.0), ("defocus", 4.0)]
    psnr = {key: r["input_psnr"] for key, r in zip(rows, report["results"])}
    # same seed along a curve, no camera noise: only the size changes, so a larger blur is a worse input
    assert psnr[("linear_motion", 12.0)] < psnr[("linear_motion", 2.0)] - 1
    assert psnr[("defocus", 4.0)] < psnr[("defocus", 1.0)] - 1
    assert all(math.isfinite(r["gain"][str(tiny_pipeline_dir)]) for r in report["results"])
    assert (out / "results.md").read_text().count("\n") == 2 + len(rows)
    assert (out / "blur_size.png").stat().st_size > 1000


def test_eval_kernels_sharp_photos_rows(tiny_pipeline_dir, tmp_path):
    # --sharp: every photo as JPEG q90 through the pipeline; the JPEG's PSNR is the baseline of each row
    sharp = tmp_path / "sharp"
    sharp.mkdir()
    for i in range(2):
        Image.fromarray(_smooth_image(50 + i, (72, 88))).save(sharp / f"s{i}.png")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "train" / "eval_kernels.py"), "--model", str(tiny_pipeline_dir),
               "--sharp", str(sharp), "--threads", "1", "--output_dir", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["sharp"]
    assert [r["image"] for r in rows] == ["s0.png", "s1.png"]
    for r in rows:
        assert 30 < r["input"] < 60 and 0 <= r["confidence"] <= 1  # a smooth photo survives JPEG q90 well
        assert all(math.isfinite(r[k]) for k in ("estimated", "pipeline", "networks"))
    table = (out / "results.md").read_text()
    assert "| s1.png |" in table and f"| **mean** | {np.mean([r['input'] for r in rows]):.2f} |" in table


def test_eval_kernels_defocus_kind_draws_disks(tiny_pipeline_dir, tmp_path):
    # --kind defocus: the synthetic rows are blurred by disks of a radius drawn in --radius (length sqrt(3) r)
    sharp = tmp_path / "sharp"
    sharp.mkdir()
    Image.fromarray(_smooth_image(7, (96, 112))).save(sharp / "a.png")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "train" / "eval_kernels.py"), "--model", str(tiny_pipeline_dir),
               "--synthetic", str(sharp), "--kind", "defocus", "--radius", "3,4", "--no_networks", "--threads", "1",
               "--output_dir", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert 3 <= row["extent"] <= 4 and 3 * 3**0.5 - 0.5 < row["true_length"] < 4 * 3**0.5 + 0.5, row
    assert row["true_kernel"] > row["input"] and math.isfinite(row["estimated"])


def test_eval_kernels_linear_kind_with_lights_and_jpeg(tiny_pipeline_dir, tmp_path):
    # --kind linear draws a straight streak of a length in --extent; --lights clips highlights (the reference is the
    # sharp photo clipped, so lights cost the input PSNR); --jpeg compresses the blurry photo. In-process (the
    # command line itself is covered by the tests above): the script's own synthetic_rows on the tiny pipeline.
    import importlib.util

    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    spec = importlib.util.spec_from_file_location("eval_kernels", ROOT / "train" / "eval_kernels.py")
    eval_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_kernels)
    sharp = tmp_path / "sharp"
    sharp.mkdir()
    Image.fromarray(_smooth_image(8, (96, 112))).save(sharp / "a.png")
    pipe = GLOWDeblurPipeline.from_pretrained(tiny_pipeline_dir)
    rows = {}
    for name, extra in (("plain", []), ("lights", ["--lights", "2000"]), ("jpeg", ["--jpeg", "20"]),
                        ("night", ["--lights", "2000", "--scene_brightness", "0.3"])):
        args = eval_kernels.parse_args(["--synthetic", str(sharp), "--kind", "linear", "--extent", "9,10",
                                        "--no_networks", "--output_dir", str(tmp_path / name)] + extra)
        (rows[name],) = eval_kernels.synthetic_rows(pipe, args)
    assert 9 <= rows["plain"]["extent"] <= 10 and abs(rows["plain"]["true_length"] - rows["plain"]["extent"]) < 1.5
    assert rows["lights"]["true_length"] == rows["plain"]["true_length"]  # the same draws, lights added after
    assert rows["lights"]["input"] < rows["plain"]["input"] - 1 and rows["jpeg"]["input"] < rows["plain"]["input"]
    assert rows["plain"]["true_kernel"] > rows["plain"]["input"] + 2  # measured +4.0 dB
    assert rows["night"]["true_length"] == rows["plain"]["true_length"] and rows["night"]["input"] != rows["lights"]["input"]
    assert all(math.isfinite(r[k]) for r in rows.values() for k in ("estimated", "ungated", "true_kernel"))


def test_eval_kernels_refuses_a_blind_config_key_the_model_lacks(tiny_pipeline_dir, tmp_path):
    # diffusers' from_config keeps unknown keys unused: a typo (or a setting newer than the model folder's code) would
    # otherwise be measured as if it were applied
    command = [sys.executable, str(ROOT / "train" / "eval_kernels.py"), "--model", str(tiny_pipeline_dir),
               "--synthetic", str(tmp_path), "--no_networks", "--blind_config", '{"lambda_gard": 0.004}',
               "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0 and "lambda_gard" in result.stderr and not (tmp_path / "out" / "results.json").exists()
