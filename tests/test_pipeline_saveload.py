"""Save/load round trips: trust_remote_code in a fresh process where `glow` cannot be imported; the shipped folder."""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import glow
from glow.pipeline_glowdeblur import GLOWDeblurPipeline
from glow.presets import build_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


def _image():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(70, 90), mode="bicubic")
    return x[0].clamp(0, 1)


def _check_folder(folder):
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    weights = [f for f in files if "pytorch_model" in f or f.endswith((".bin", ".pt", ".pth", ".ckpt", ".safetensors"))]
    assert weights and all(f.endswith(".safetensors") for f in weights), weights
    for name in ("pipeline_glowdeblur.py", "image_processing_glowdeblur.py", "motion_estimator/motion_estimator.py",
                 "blind_deconvolution/deconvolution_utils.py",
                 "prereconstruction/prereconstruction.py", "model_index.json", "scheduler/scheduler_config.json"):
        assert name in files, (name, files)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_glowdeblur", "GLOWDeblurPipeline"]
    assert index["motion_estimator"] == ["motion_estimator", "MotionEstimator"]
    assert index["prereconstruction"] == ["prereconstruction", "PreReconstructionUNet"]
    assert index["transformer"] == ["diffusers", "SanaTransformer2DModel"]
    assert index["text_encoder"] == [None, None]  # referenced via text_encoder_id, not copied
    # the copied modules must not import glow
    for py in folder.rglob("*.py"):  # real import statements (a "# Copied from glow..." comment is fine)
        tree = ast.parse(py.read_text())
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m == "glow" or m.startswith("glow.")], (py, modules)
    return index


def test_trust_remote_code_round_trip_without_glow(tmp_path):
    pipe = build_pipeline("tiny", seed=0)
    torch.nn.init.normal_(pipe.prereconstruction.ending.weight, std=0.05)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)  # this is also exactly the folder push_to_hub uploads
    _check_folder(folder)
    expected = pipe(_image(), prompt="a red car", generator=torch.Generator().manual_seed(0), output_type="np")

    np.save(tmp_path / "input.npy", _image().numpy())
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["glow"] = None  # `import glow` raises ImportError in this process
        sys.path = [p for p in sys.path if not p.startswith({str(Path(glow.__file__).parents[1])!r})]
        try:
            import glow
        except ImportError:
            pass
        else:
            raise SystemExit("glow importable")
        import numpy as np, torch
        torch.set_num_threads(1)
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(pipe).__name__ == "GLOWDeblurPipeline", type(pipe)
        assert type(pipe).__module__.startswith("diffusers_modules"), type(pipe).__module__
        assert type(pipe.motion_estimator).__module__.startswith("diffusers_modules")
        pipe.set_progress_bar_config(disable=True)
        img = torch.from_numpy(np.load("input.npy"))
        out = pipe(img, prompt="a red car", generator=torch.Generator().manual_seed(0), output_type="np")
        np.save("output.npy", out.images[0])
        np.save("motion.npy", out.motion_fields[0].numpy())
        pipe.save_pretrained("resaved")
        print("OK")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
    assert np.allclose(np.load(tmp_path / "output.npy"), expected.images[0], atol=1e-5)
    assert np.allclose(np.load(tmp_path / "motion.npy"), expected.motion_fields[0].numpy(), atol=1e-5)
    # re-saving from the dynamically loaded classes gives the same layout
    _check_folder(tmp_path / "resaved")


def test_glow_class_from_pretrained(tmp_path):
    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = GLOWDeblurPipeline.from_pretrained(tmp_path)
    assert type(loaded) is GLOWDeblurPipeline
    assert type(loaded.motion_estimator).__module__ == "glow.models.motion_estimator"
    loaded.set_progress_bar_config(disable=True)
    a = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="pt").images[0]
    b = loaded(_image(), generator=torch.Generator().manual_seed(0), output_type="pt").images[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="safetensors"):
        pipe.save_pretrained(tmp_path / "x", safe_serialization=False)


def test_from_pretrained_options_are_diffusers_own(tmp_path):
    # variant, dtype (per component), device_map and low_cpu_mem_usage work as in any diffusers pipeline
    pipe = build_pipeline("tiny", seed=0)
    pipe.save_pretrained(tmp_path)
    name, value = next((n, v) for n, v in pipe.prereconstruction.state_dict().items() if v.numel() > 100)
    with torch.no_grad():
        pipe.prereconstruction.state_dict()[name].add_(1.0)
        pipe.transformer.proj_out.bias.add_(1.0)
    pipe.save_pretrained(tmp_path, variant="ema")  # the same folder, a second set of weight files
    assert (tmp_path / "prereconstruction" / "diffusion_pytorch_model.ema.safetensors").is_file()

    plain = GLOWDeblurPipeline.from_pretrained(tmp_path)
    ema = GLOWDeblurPipeline.from_pretrained(tmp_path, variant="ema")
    assert type(ema) is GLOWDeblurPipeline
    assert torch.equal(ema.prereconstruction.state_dict()[name], plain.prereconstruction.state_dict()[name] + 1.0)
    assert torch.equal(ema.transformer.proj_out.bias, plain.transformer.proj_out.bias + 1.0)

    mixed = GLOWDeblurPipeline.from_pretrained(tmp_path, dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert mixed.transformer.dtype == torch.bfloat16 and mixed.prereconstruction.dtype == torch.float32
    half = GLOWDeblurPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16, low_cpu_mem_usage=False)
    assert {m.dtype for m in (half.transformer, half.prereconstruction, half.motion_estimator)} == {torch.bfloat16}
    half.set_progress_bar_config(disable=True)
    assert half(_image(), output_type="np").images[0].shape == (70, 90, 3)

    mapped = GLOWDeblurPipeline.from_pretrained(tmp_path, device_map="cpu")
    assert mapped.hf_device_map == "cpu" and mapped.device.type == "cpu"


def test_shipped_default_model():
    folder = Path(glow.DEFAULT_MODEL_PATH)
    index = _check_folder(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 30 * 2**20
    # the copied modules are the current sources (re-run `python -m glow.presets --out glow/default_model`)
    root = Path(glow.__file__).parent
    for name in ("pipeline_glowdeblur.py", "image_processing_glowdeblur.py"):
        assert (folder / name).read_text() == (root / name).read_text(), name
    assert index["blind_deconvolution"] == ["blind_deconvolution", "BlindDeconvolution"]
    for name in ("motion_estimator", "prereconstruction", "blind_deconvolution"):
        assert (folder / name / f"{name}.py").read_text() == (root / "models" / f"{name}.py").read_text()
    utils = "blind_deconvolution/deconvolution_utils.py"  # imported relatively by blind_deconvolution.py
    assert (folder / utils).read_text() == (root / "models" / "deconvolution_utils.py").read_text()
    pipe = GLOWDeblurPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert "training_status" not in index and "**Weights:** joint fine-tuning" in (folder / "README.md").read_text()
    out = pipe(np.zeros((24, 40, 3), np.uint8), fidelity=1.0, output_type="np")
    assert out.images[0].shape == (24, 40, 3)
