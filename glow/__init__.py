"""GLOWDeblur: real-world image deblurring with Blur Pattern Pretraining (BPP) and motion/semantic guidance (MoSeG)."""
from pathlib import Path

__version__ = "0.1.0"

#: The pipeline folder shipped inside the package (save_pretrained output, safetensors only).
DEFAULT_MODEL_PATH = str(Path(__file__).resolve().parent / "default_model")


def __getattr__(name):
    # Lazy exports: `import glow` stays cheap (no torch/diffusers import) for tools that only need the path.
    if name == "GLOWDeblurPipeline":
        from .pipeline_glowdeblur import GLOWDeblurPipeline

        return GLOWDeblurPipeline
    if name == "BlurSimulator":
        from .data.simulator import BlurSimulator

        return BlurSimulator
    raise AttributeError(f"module 'glow' has no attribute {name!r}")
