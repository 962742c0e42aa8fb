"""BPP data: blur kernels and fields, camera realism, the BlurSimulator and the datasets."""
from .motion import KERNEL_PATCH, KERNEL_SIZE, MOTION_PATCH, kernel_to_motion, motion_to_color, motion_to_polar
from .simulator import BLUR_KINDS, BlurSimulator, SimulatorConfig

__all__ = [
    "MOTION_PATCH", "KERNEL_PATCH", "KERNEL_SIZE", "kernel_to_motion", "motion_to_polar", "motion_to_color",
    "BlurSimulator", "SimulatorConfig", "BLUR_KINDS",
    "SharpFolderDataset", "PairedFolderDataset", "FrameFolderDataset", "MixedDataset", "collate",
]


def __getattr__(name):
    # datasets import glow.io (Pillow); keep `import glow.data` light for the model code.
    if name in ("SharpFolderDataset", "FrameFolderDataset", "MixedDataset", "collate"):
        from . import datasets

        return getattr(datasets, name)
    if name in ("PairedFolderDataset", "detect_layout", "PAIRED_LAYOUTS"):
        from . import paired

        return getattr(paired, name)
    raise AttributeError(f"module 'glow.data' has no attribute {name!r}")
