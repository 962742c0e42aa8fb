#!/usr/bin/env python
"""Joint fine-tuning of a GLOWDeblur pipeline on real blur, mixed with simulated blur so the BPP priors are kept.

Starts from a pipeline folder or Hub id (`--pretrained_model_name_or_path`, default: the shipped model) and mixes
real paired folders (`--train_data_dir`, repeatable; GoPro / RealBlur / RSBlur / BSD layouts or blur/ + sharp/,
detected by glow.data), high-fps frame folders (`--frames_data_dir`) and sharp folders blurred by the simulator
(`--sharp_data_dir`) at `--mix_ratios paired,frames,sim` (or `--sim_ratio`). Components can be frozen
(`--freeze motion_estimator,prereconstruction`). Same flags, losses, checkpoints and outputs as train/bpp.py.

    python train/finetune.py --train_data_dir ../shared/data/train/pairs/gopro_style \\
        --frames_data_dir ../shared/data/train/frames --sharp_data_dir ../shared/data/train/sharp \\
        --mix_ratios 0.5,0.2,0.3 --validation_data_dir ../shared/data/val/sharp --output_dir runs/finetune
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from glow import training  # noqa: E402


def group_ratios(args, parser) -> dict:
    if args.mix_ratios:
        try:
            paired, frames, sim = (float(v) for v in args.mix_ratios.split(","))
        except ValueError:
            parser.error(f"--mix_ratios wants three numbers 'paired,frames,sim', got {args.mix_ratios!r}")
        return {"paired": paired, "frames": frames, "sim": sim}
    if not 0.0 <= args.sim_ratio < 1.0:
        parser.error(f"--sim_ratio must be in [0, 1), got {args.sim_ratio}")
    real = [g for g, dirs in (("paired", args.train_data_dir), ("frames", args.frames_data_dir)) if dirs]
    ratios = {"paired": 0.0, "frames": 0.0, "sim": args.sim_ratio if args.sharp_data_dir else 0.0}
    for g in real:  # the real sources share the rest equally
        ratios[g] = (1.0 - ratios["sim"]) / len(real)
    return ratios


def main(argv=None) -> int:
    parser = training.build_arg_parser(__doc__.split("\n\n")[0], finetune=True)
    parser.set_defaults(preset=None)
    args = training.parse_args(parser, argv)
    if not (args.train_data_dir or args.frames_data_dir):
        parser.error("give real data: --train_data_dir (paired folders) and/or --frames_data_dir")

    from glow.data import PairedFolderDataset, SharpFolderDataset, collate
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    paired = {f"paired/{Path(d).name}": PairedFolderDataset(d, resolution=args.resolution, seed=args.seed)
              for d in args.train_data_dir}
    sim = {}
    if args.sharp_data_dir:
        name = "sim/" + "+".join(Path(d).name for d in args.sharp_data_dir)
        sim[name] = SharpFolderDataset(args.sharp_data_dir, resolution=args.resolution,
                                       simulator=args.simulator_config, seed=args.seed,
                                       render_on_device=args.render_on_device,
                                       sharpen_probability=args.sharpen_probability)
    dataset, summary = training.build_mixed_dataset(
        args, {"paired": paired, "frames": training.frame_sources(args), "sim": sim}, group_ratios(args, parser))

    def load_pipeline():
        pipe = GLOWDeblurPipeline.from_pretrained(args.pretrained_model_name_or_path)
        weights_preset = pipe.config.get("preset", "custom")
        if args.preset is not None and args.preset != weights_preset:
            raise ValueError(f"--preset {args.preset} but {args.pretrained_model_name_or_path} is {weights_preset!r}")
        args.preset = weights_preset
        return pipe

    return training.run_training(
        args, stage="joint fine-tuning", build_pipeline=load_pipeline, train_dataset=dataset, collate_fn=collate,
        data_summary=summary, base_model=args.pretrained_model_name_or_path)


if __name__ == "__main__":
    sys.exit(main())
