"""Benchmark the web app as a user meets it: cold start until it serves, then 1-megapixel requests via gradio_client.

    python benchmarks/bench_app.py [--model DIR_OR_HUB_ID] [--starts 2] [--requests 3] [--size 1280x800]

- cold start: `python app.py` launched as a subprocess; times until the TCP port accepts, until `/config` answers
  200 (the page can load) and until the model, loaded in a background thread, is ready (the app logs "loaded ...");
  and the server's resident memory then;
- requests: a `--size` image (default 1280x800 = 1.02 MP, resized from examples/real_street_nafnet.jpg) through
  `Client(url).predict(image=..., api_name="/deblur")` at the app's default settings (upload + deblur + download of
  every output); the first request and the median of the rest are reported, with the server's largest
  resident memory seen after a request.
The machine's load average is printed before and after: other work on the same cores slows everything down.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def config_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "config", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def start_app(env: dict, port: int, log_path: Path, timeout: float = 180.0):
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    t_port = None
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        if t_port is None and port_open(port):
            t_port = time.perf_counter() - started
        if t_port is not None and config_ok(url):
            return proc, url, t_port, time.perf_counter() - started
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"app did not serve within {timeout} s:\n{log_path.read_text()[-3000:]}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GLOW_MODEL for the app (default: the app's own default)")
    parser.add_argument("--starts", type=int, default=2, help="cold starts to time")
    parser.add_argument("--requests", type=int, default=3, help="1-MP requests to time (after the cold start)")
    parser.add_argument("--size", default="1280x800", help="request image size WxH")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "real_street_nafnet.jpg")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from gradio_client import Client, handle_file
    from PIL import Image

    width, height = (int(v) for v in args.size.lower().split("x"))
    workdir = Path(tempfile.mkdtemp(prefix="bench_app_"))
    request_image = workdir / f"request_{width}x{height}.jpg"
    Image.open(args.image).convert("RGB").resize((width, height), Image.LANCZOS).save(request_image, quality=92)

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1"}
    if args.model:
        env["GLOW_MODEL"] = args.model
    results = {"load_before": os.getloadavg(), "cpu_count": os.cpu_count(), "size": [width, height],
               "model": args.model or "app default (glow.DEFAULT_MODEL_PATH)", "starts": []}

    proc = None
    for i in range(args.starts):
        port = free_port()
        env["GRADIO_SERVER_PORT"] = str(port)
        log_path = workdir / f"app_{i}.log"
        launched = time.perf_counter()
        proc, url, t_port, t_config = start_app(env, port, log_path)
        while "glowdeblur.app: loaded" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.perf_counter() - launched > 300:
                raise RuntimeError(f"the model did not load:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        t_model = time.perf_counter() - launched
        results["starts"].append({"port_open_s": round(t_port, 2), "serving_s": round(t_config, 2),
                                  "model_ready_s": round(t_model, 2), "rss_mb": round(rss_mb(proc.pid), 1)})
        print(f"cold start {i + 1}: port open {t_port:.2f} s, serving (/config 200) {t_config:.2f} s, "
              f"model ready {t_model:.2f} s, RSS {results['starts'][-1]['rss_mb']:.0f} MB", flush=True)
        if i < args.starts - 1:
            stop(proc)

    try:
        client = Client(url, verbose=False)
        times, peak = [], 0.0
        for i in range(args.requests):
            started = time.perf_counter()
            outputs = client.predict(image=handle_file(str(request_image)), api_name="/deblur")
            times.append(time.perf_counter() - started)
            peak = max(peak, rss_mb(proc.pid))
            assert Image.open(outputs[3]).size == (width, height)
            print(f"request {i + 1}: {times[-1]:.2f} s  ({outputs[4].splitlines()[0].split(' — ')[-1]})", flush=True)
        results["request_first_s"] = round(times[0], 2)
        if len(times) > 1:
            results["request_median_rest_s"] = round(statistics.median(times[1:]), 2)
        results["request_rss_max_after_mb"] = round(peak, 1)
    finally:
        stop(proc)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
