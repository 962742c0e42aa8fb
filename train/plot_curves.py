#!/usr/bin/env python
"""Validation curves of training runs against CPU-hours, from their JSONL logs: a PNG and a markdown table.

    python train/plot_curves.py train/runs/bpp-small-nowiener train/sweeps/* --out docs/training_curves.png

Each argument is a run folder (its `logs/train_log.jsonl` is read) or a log file. CPU time per log line is the logged
`cpu_seconds` (process CPU time, all threads) where present; older lines, written before that field existed, by runs
that were all single-threaded, count their wall time (`steps / steps_per_s`). Validation PSNR is the training-time
validation (engine-blurred crops of the validation folder, fixed seed, EMA weights): `prerecon` = the
pre-reconstruction alone, `pipeline` = the pipeline at its defaults, both minus the blurry input's PSNR.
A run started from another run's weights (`--init_from`, `--pretrained_model_name_or_path`) is drawn after it with
`--after CHILD=PARENT` (folder names): its CPU-hours start where the parent's log ends.
"""
import argparse
import json
import sys
from pathlib import Path


def read_curve(path: Path) -> dict:
    log = path / "logs" / "train_log.jsonl" if path.is_dir() else path
    name = (path if path.is_dir() else path.parent.parent).name
    cpu_h, last_step, points = 0.0, 0, []
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "steps_per_s" in r:
            steps = r["step"] - last_step if r["step"] > last_step else 0
            if "cpu_seconds" in r:
                cpu_h += r["cpu_seconds"] / 3600
            elif steps and r["steps_per_s"] > 0:
                cpu_h += steps / r["steps_per_s"] / 3600
            last_step = r["step"]
        if "val/prerecon_psnr" in r:
            points.append({"step": r["step"], "cpu_h": cpu_h, "blurry": r["val/blurry_psnr"],
                           "prerecon": r["val/prerecon_psnr"], "pipeline": r["val/pipeline_psnr"]})
    return {"name": name, "points": points, "cpu_h": cpu_h, "steps": last_step}


def markdown(curves: list[dict], at_cpu_h: list[float]) -> str:
    head = "| run | steps | CPU-h | " + " | ".join(f"prerecon gain @ {h:g} CPU-h" for h in at_cpu_h) + \
           " | last prerecon gain | last pipeline gain |"
    rows = [head, "|" + "---|" * (5 + len(at_cpu_h))]
    for c in curves:
        pts = c["points"]
        if not pts:
            continue
        cells = []
        for h in at_cpu_h:  # the last validation at or before h (no extrapolation)
            before = [p for p in pts if p["cpu_h"] <= h + 1e-9]
            cells.append(f"{before[-1]['prerecon'] - before[-1]['blurry']:+.2f} (step {before[-1]['step']})"
                         if before and h <= c["cpu_h"] + 1e-9 else "–")
        last = pts[-1]
        rows.append(f"| {c['name']} | {c['steps']} | {c['cpu_h']:.2f} | " + " | ".join(cells) +
                    f" | {last['prerecon'] - last['blurry']:+.2f} | {last['pipeline'] - last['blurry']:+.2f} |")
    return "\n".join(rows)


def plot(curves: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for key, ax in zip(("prerecon", "pipeline"), axes):
        for c in curves:
            pts = c["points"]
            ax.plot([p["cpu_h"] for p in pts], [p[key] - p["blurry"] for p in pts], marker=".", label=c["name"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{key}: validation PSNR gain over the blurry input")
        ax.set_xlabel("CPU-hours")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("dB")
    axes[0].set_ylim(bottom=-1.0)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or train_log.jsonl files")
    parser.add_argument("--out", default=None, help="PNG to write (needs matplotlib)")
    parser.add_argument("--at", default="0.1,0.2,0.3", help="CPU-hours at which the table compares the runs")
    parser.add_argument("--after", action="append", default=[], metavar="CHILD=PARENT",
                        help="CHILD continues from PARENT's weights: offset its CPU-hours by PARENT's total")
    args = parser.parse_args(argv)
    curves = [read_curve(Path(r)) for r in args.runs]
    by_name = {c["name"]: c for c in curves}
    for pair in args.after:  # applied in the order given: for a chain a -> b -> c, pass b=a before c=b
        names = pair.split("=")
        if len(names) != 2 or not all(n in by_name for n in names):
            parser.error(f"--after {pair}: expected CHILD=PARENT with run names among {sorted(by_name)}")
        child, parent = (by_name[n] for n in names)
        for p in child["points"]:
            p["cpu_h"] += parent["cpu_h"]
        child["cpu_h"] += parent["cpu_h"]
        child["name"] = f"{parent['name']} → {child['name']}"
    print(markdown(curves, [float(h) for h in args.at.split(",")]))
    if args.out:
        plot(curves, Path(args.out))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
