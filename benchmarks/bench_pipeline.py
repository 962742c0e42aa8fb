"""Speed and memory of GLOWDeblurPipeline (CPU, fp32).

    python benchmarks/bench_pipeline.py                        # default model, 1 MP and 12 MP, default settings
    python benchmarks/bench_pipeline.py --megapixels 1 --steps 2 --tile-size 1024
    python benchmarks/bench_pipeline.py --image examples/real_street_nafnet.jpg --skip-components   # your photo

CPU-s/MP (process CPU time) is reported next to wall time because the machine is shared: with --threads 1 it is
close to the compute the pipeline needs regardless of other load. Each image size runs in its own subprocess so peak RSS (ru_maxrss) is per size. Also times each component on one
default-size tile. Weights do not matter for speed, so the (possibly untrained) shipped folder is fine.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _load(model):
    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    pipe = GLOWDeblurPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call_kwargs(args):
    kw = dict(num_inference_steps=args.steps, fidelity=args.fidelity, guidance_scale=args.guidance_scale,
              networks={"auto": "auto", "always": True, "never": False}[args.networks])
    if args.tile_size is not None:
        kw["tile_size"] = None if args.tile_size == 0 else args.tile_size
    if args.tile_overlap is not None:
        kw["tile_overlap"] = args.tile_overlap
    return kw


def run_one(args):
    """Child process: one image of args.megapixels[0] MP; prints a JSON line."""
    torch.set_num_threads(args.threads)
    if args.image:  # a real photo at its own size (EXIF rotation applied, any mode made RGB, as the app reads it)
        from glow.io import load_image

        image = np.asarray(load_image(args.image).convert("RGB"))
        h, w = image.shape[:2]
        return _time_pipeline(args, image, h, w)
    mp = args.megapixels[0]
    w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
    h = int(round(mp * 1e6 / w))
    rng = np.random.default_rng(0)
    image = (rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255).astype(np.uint8)
    image = np.kron(image, np.ones((16, 16, 1), np.uint8))[:h, :w]  # blocky, so not pure noise
    # a horizontal streak (--streak px; box filter by cumulative sums: little memory, so the peak below is the
    # pipeline's), so the blind deconvolution has a blur to find and remove
    n = args.streak
    image = image.astype(np.float32)
    for y, x in zip(rng.integers(0, h - 5, args.lights), rng.integers(0, w - 5, args.lights)):
        image[y : y + 5, x : x + 5] = 10 * 255  # lights 10x brighter than white: still clipped once blurred
    padded = np.pad(image, ((0, 0), ((n + 1) // 2, n // 2), (0, 0)), mode="edge").cumsum(axis=1)
    image = np.round((padded[:, n:] - padded[:, :-n]) / n).clip(0, 255).astype(np.uint8)
    del padded
    return _time_pipeline(args, image, h, w)


def _time_pipeline(args, image, h, w):
    pipe = _load(args.model)
    pipe(image[:64, :64], **_call_kwargs(args))  # warm-up (also loads/caches the empty-prompt embedding)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out = pipe(image, generator=torch.Generator().manual_seed(0), output_type="np", **_call_kwargs(args))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert out.images[0].shape == image.shape
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the pipeline's peak (measured first)
    blind = {"confidence": out.blur_confidences[0]} if out.blur_confidences else {}
    blind["networks_weight"] = out.networks_weights[0]
    if args.networks == "auto" or pipe.config.sharp_blur_measure is not None:  # the photo's two measures ran
        from glow.image_processing_glowdeblur import blur_measure, noise_floor

        rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        t0 = time.perf_counter()
        noise_floor(rgb), blur_measure(rgb)
        blind["gate_measures_s"] = time.perf_counter() - t0
        del rgb
    if pipe.blind_deconvolution is not None:  # its two halves alone: the kernel search, then the deconvolution
        rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        t0 = time.perf_counter()
        kernel, _, info = pipe.blind_deconvolution.estimate_kernel(rgb)
        blind["estimate_s"] = time.perf_counter() - t0
        blind["kernel_length"] = info["length"]
        t0 = time.perf_counter()
        pipe.blind_deconvolution.deconvolve(rgb, kernel)
        blind["deconvolve_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe.blind_deconvolution.confidence_map(rgb, kernel)
        blind["confidence_map_s"] = time.perf_counter() - t0
        del rgb
    print(json.dumps(dict(megapixels=h * w / 1e6, size=f"{w}x{h}", seconds=seconds, s_per_mp=seconds / (h * w / 1e6),
                          cpu_s_per_mp=cpu / (h * w / 1e6),
                          peak_rss_mb=rss, rss_after_load_mb=rss_before, **blind)))


@torch.no_grad()
def components(args):
    torch.set_num_threads(args.threads)
    pipe = _load(args.model)
    tile = args.tile_size or 512
    x = torch.rand(1, 3, tile, tile)
    emb, mask = pipe.encode_prompt([""])
    rows = {}

    def timed(name, fn, repeat=3):
        fn()
        t = []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            r = fn()
            t.append((time.perf_counter() - t0, time.process_time() - c0))
        rows[name] = min(t)
        return r

    est = timed("motion_estimator", lambda: pipe.motion_estimator(x))
    if pipe.prereconstruction.config.use_wiener:
        timed("  of which: wiener deconvolution (inside prereconstruction)", lambda: pipe.prereconstruction.wiener(x, est.kernels))
    pre = timed("prereconstruction (wiener + U-Net)", lambda: pipe.prereconstruction(x, kernels=est.kernels, motion=est.motion))
    hidden = pipe.transformer_input(torch.randn(1, 192, tile // 8, tile // 8), pre.features, est.motion)
    timed("transformer (one step)", lambda: pipe.transformer(hidden, encoder_hidden_states=emb,
                                                             encoder_attention_mask=mask, timestep=torch.tensor([1000.0])))
    # multiply-accumulates per pixel (convolutions and matmuls; FFTs and elementwise ops are not counted)
    from torch.utils.flop_counter import FlopCounterMode

    macs = {}
    for name, fn in [
        ("motion_estimator", lambda: pipe.motion_estimator(x)),
        ("prereconstruction (wiener + U-Net)", lambda: pipe.prereconstruction(x, kernels=est.kernels, motion=est.motion)),
        ("transformer (one step)", lambda: pipe.transformer(hidden, encoder_hidden_states=emb, encoder_attention_mask=mask,
                                                            timestep=torch.tensor([1000.0]))),
    ]:
        with FlopCounterMode(display=False) as counter:
            fn()
        macs[name] = counter.get_total_flops() / 2 / (tile * tile)
    mp = tile * tile / 1e6
    print(f"per component on one {tile}x{tile} tile ({args.threads} threads):")
    for name, (s, c) in rows.items():
        mac = f", {macs[name] / 1000:5.1f} kMAC/px" if name in macs else ""
        print(f"  {name:58s} {s * 1000:8.1f} ms = {s / mp:5.2f} s/MP wall, {c / mp:5.2f} CPU-s/MP{mac}")
    params = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("motion_estimator", "prereconstruction", "transformer")}
    print(f"parameters (without text encoder): {params}, total {sum(params.values()) / 1e6:.2f} M")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder (default: glow.DEFAULT_MODEL_PATH)")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1.0, 12.0])
    parser.add_argument("--steps", type=int, default=None, help="default: the pipeline's default")
    parser.add_argument("--fidelity", type=float, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--tile-size", type=int, default=None, help="0 = no tiling; default: the pipeline's default")
    parser.add_argument("--tile-overlap", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streak", type=int, default=21,
                        help="length (px) of the test photo's horizontal blur; a kernel found 25 px or longer makes the "
                             "larger search the sparse long-blur one (41 px is found as 30 px)")
    parser.add_argument("--lights", type=int, default=0,
                        help="clipped lights per MP (5x5 px, 10x white, before the blur): 40 clip ~0.46%% of the "
                             "pixels, like the GoPro frame in ../shared/data/real_blurry; clipped pixels take their own "
                             "path in the kernel search and the deconvolution (docs/deconvolution.md)")
    parser.add_argument("--image", default=None,
                        help="time this photo at its own size instead of the synthetic one (--megapixels, --streak and "
                             "--lights are then ignored)")
    parser.add_argument("--networks", choices=("auto", "always", "never"), default="auto",
                        help="the pipeline's networks= (auto: skipped on sharp, clean photos; never: the deconvolution "
                             "alone, no pre-reconstruction, no diffusion)")
    parser.add_argument("--no-networks", dest="networks", action="store_const", const="never",
                        help="the same as --networks never")
    parser.add_argument("--skip-components", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        import glow

        args.model = glow.DEFAULT_MODEL_PATH
    import inspect

    from glow.pipeline_glowdeblur import GLOWDeblurPipeline

    defaults = {k: v.default for k, v in inspect.signature(GLOWDeblurPipeline.__call__).parameters.items()}
    args.steps = args.steps if args.steps is not None else defaults["num_inference_steps"]
    args.fidelity = args.fidelity if args.fidelity is not None else defaults["fidelity"]
    args.guidance_scale = args.guidance_scale if args.guidance_scale is not None else defaults["guidance_scale"]
    if args.child:
        return run_one(args)

    print(f"load: {os.getloadavg()} (shared machine), torch {torch.__version__}, threads {args.threads}, "
          + (f"photo {args.image}" if args.image else f"streak {args.streak} px, {args.lights} clipped lights per MP"))
    print(f"settings: steps={args.steps} fidelity={args.fidelity} guidance_scale={args.guidance_scale} "
          f"tile_size={args.tile_size if args.tile_size is not None else defaults['tile_size']} "
          f"tile_overlap={args.tile_overlap if args.tile_overlap is not None else defaults['tile_overlap']}"
          f" networks={args.networks}")
    for mp in args.megapixels if not args.image else [0.0]:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--megapixels", str(mp),
               "--steps", str(args.steps), "--fidelity", str(args.fidelity), "--guidance-scale", str(args.guidance_scale),
               "--threads", str(args.threads), "--streak", str(args.streak),
               "--lights", str(int(args.lights * mp)), "--networks", args.networks]
        if args.image:
            cmd += ["--image", args.image]
        if args.tile_size is not None:
            cmd += ["--tile-size", str(args.tile_size)]
        if args.tile_overlap is not None:
            cmd += ["--tile-overlap", str(args.tile_overlap)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:])
            raise SystemExit(res.returncode)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>11s} ({r['megapixels']:.1f} MP): {r['seconds']:7.1f} s = {r['s_per_mp']:.2f} s/MP wall ({r['cpu_s_per_mp']:.2f} CPU-s/MP), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (after loading: {r['rss_after_load_mb']:.0f} MB)"
              + (f"; blind deconvolution alone: kernel estimate {r['estimate_s']:.1f} s, deconvolution "
                 f"{r['deconvolve_s']:.1f} s, confidence map {r['confidence_map_s']:.1f} s (a {r['kernel_length']:.0f} px "
                 f"kernel, applied {r['confidence']:.0%})" if "estimate_s" in r else "")
              + f"; networks applied {r['networks_weight']:.0%}"
              + (f" (the gate's measures {r['gate_measures_s']:.2f} s)" if "gate_measures_s" in r else ""))
    if not args.skip_components:
        components(args)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
