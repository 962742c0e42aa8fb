#!/usr/bin/env python
"""Blur Pattern Pretraining (BPP): train GLOWDeblur from scratch on simulated blur.

Sharp images (one or more folders, searched recursively) are blurred on the fly by `glow.data.BlurSimulator`
(camera shake, linear motion, defocus, rotation/zoom, moving objects, with camera realism); optional high-fps frame
folders add real motion blur by frame averaging. All three components train together: the pre-reconstruction
(Charbonnier + FFT loss), the motion estimator (against the simulator's motion field and kernels, where known) and,
from `--diffusion_start_step` on, the diffusion backbone (flow matching on the residual). See glow/training/.

    python train/bpp.py --preset small --train_data_dir ../shared/data/train/sharp \\
        --frames_data_dir ../shared/data/train/frames --validation_data_dir ../shared/data/val/sharp \\
        --output_dir runs/bpp-small
    accelerate launch --multi_gpu --num_processes 2 train/bpp.py ...   # several processes (CPU: gloo)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glow import training  # noqa: E402


def main(argv=None) -> int:
    parser = training.build_arg_parser(__doc__.split("\n\n")[0], finetune=False)
    args = training.parse_args(parser, argv)
    if not args.train_data_dir:
        parser.error("give at least one --train_data_dir (a folder of sharp images)")

    import torch

    from glow.data import SharpFolderDataset, collate
    from glow.presets import apply_overrides, build_pipeline, get_preset

    sharp = SharpFolderDataset(args.train_data_dir, resolution=args.resolution, simulator=args.simulator_config,
                               seed=args.seed, render_on_device=args.render_on_device,
                               sharpen_probability=args.sharpen_probability)
    dataset, summary = training.build_mixed_dataset(
        args, {"sim": {"sim/" + "+".join(Path(d).name for d in args.train_data_dir): sharp},
               "frames": training.frame_sources(args)},
        {"sim": 1.0 - args.frames_ratio, "frames": args.frames_ratio})
    model_config = apply_overrides(get_preset(args.preset), args.model_config)
    model_config["pipeline"]["preset"] = args.preset  # overrides show in the component configs

    def build():
        pipeline = build_pipeline(model_config, seed=args.seed)
        # the residual starts at zero (x0 prediction), so from step 0 the pipeline returns the pre-reconstruction
        # and the diffusion only adds what it has learnt
        torch.nn.init.zeros_(pipeline.transformer.proj_out.weight)
        torch.nn.init.zeros_(pipeline.transformer.proj_out.bias)
        if args.init_from:
            report = training.load_matching_weights(pipeline, args.init_from)
            training.logger.info("--init_from %s: %d tensors loaded, %d new (%s), %d unused", args.init_from,
                                 report["loaded"], len(report["new"]), ", ".join(report["new"][:6]),
                                 len(report["skipped"]))
        return pipeline

    return training.run_training(
        args, stage="BPP", build_pipeline=build,
        train_dataset=dataset, collate_fn=collate, data_summary=summary)


if __name__ == "__main__":
    sys.exit(main())
