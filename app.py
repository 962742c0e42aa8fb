"""GLOWDeblur web app (also the Hugging Face Space entry point): `python app.py` -> http://127.0.0.1:7860

UI only: the model lives in `glow/` (GLOWDeblurPipeline), image reading in `glow.io`, the motion-field picture in
`glow.visualize`. Environment:
  GLOW_MODEL            Hub id or local pipeline folder (default: the folder shipped in the package)
  GLOW_MAX_MEGAPIXELS   largest image accepted, in megapixels (default 24); big images are processed in tiles
  GLOW_MAX_UPLOAD_MB    largest upload file in MB (default 50)
  GRADIO_SERVER_PORT / GRADIO_SERVER_NAME   where to serve (Gradio's own variables)
API: `gradio_client.Client(url).predict(handle_file(path), ..., api_name="/deblur")` (see README, "Web app and API").
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import spaces  # the @spaces.GPU decorator is a no-op off ZeroGPU Spaces
import torch
from PIL import Image

import glow
from glow.io import ImageReadError, load_image, load_image_array
from glow.visualize import describe_motion_field, draw_motion_field

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("glowdeblur.app")
logger.setLevel(logging.INFO)

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
MODEL_ID = os.environ.get("GLOW_MODEL") or glow.DEFAULT_MODEL_PATH
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MAX_MEGAPIXELS = float(os.environ.get("GLOW_MAX_MEGAPIXELS", 24))
# glow.pipeline_glowdeblur.PAD_MULTIPLE (the pipeline's tile grid; tests/test_app.py checks they agree), not imported:
# that module imports diffusers, 3 s more before the page is up
TILE_MULTIPLE = 64
MIN_SIDE = 16  # px; smaller images carry no blur worth removing (and one 8-px motion patch would cover them)
PREVIEW_LONG_SIDE = 2048  # on-page pictures are capped here; the PNG download is always full resolution
MAX_UPLOAD = f"{float(os.environ.get('GLOW_MAX_UPLOAD_MB', 50)):g}mb"  # Gradio refuses bigger files at upload
OUTPUT_DIR = Path(tempfile.gettempdir()) / "glowdeblur_outputs"
OUTPUT_MAX_AGE_S = 3600

MAX_STEPS = 4  # the pipeline is trained for 1-4 flow-matching steps
# The UI starts at GLOWDeblurPipeline.__call__'s defaults (tests/test_app.py checks they agree; they are not read
# from the class so the page can come up before diffusers is even imported).
DEFAULT_STEPS = 1
DEFAULT_FIDELITY = 0.0
DEFAULT_SEED = 0
DEFAULT_DECONVOLVE = True
DEFAULT_NETWORKS = "auto"
NETWORKS_MODES = {"auto": "auto", "always": True, "never": False}  # the choice -> the pipeline's `networks`


def load_pipeline():
    from glow import GLOWDeblurPipeline

    started = time.perf_counter()
    pipe = GLOWDeblurPipeline.from_pretrained(MODEL_ID)
    pipe = pipe.to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s on %s in %.1f s", MODEL_ID, DEVICE, time.perf_counter() - started)
    return pipe


# Cold start: importing diffusers and loading the weights takes about as long as importing gradio, so the model
# loads in a background thread while the page is built and served; a request that comes first waits for it. On a
# ZeroGPU Space the model must be placed on "cuda" at import time in the main process: load it synchronously there.
if os.environ.get("SPACES_ZERO_GPU"):
    _PIPE_FUTURE = Future()
    _PIPE_FUTURE.set_result(load_pipeline())
else:
    _PIPE_FUTURE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-model").submit(load_pipeline)
    _PIPE_FUTURE.add_done_callback(lambda f: f.exception() and logger.error(
        "could not load the model %s", MODEL_ID, exc_info=f.exception()))


def get_pipeline():
    try:
        return _PIPE_FUTURE.result()
    except Exception as e:
        raise gr.Error(f"The model '{MODEL_ID}' could not be loaded: {type(e).__name__}: {str(e)[:300]}",
                       title="Model unavailable") from None


# ---------------------------------------------------------------------------------------------------------------
# Model call (the only GPU work)
# ---------------------------------------------------------------------------------------------------------------
@spaces.GPU(duration=60)
def run_pipeline(image, prompt: str, fidelity: float, steps: int, seed: int, tile_size: int, tile_overlap: int,
                 guidance_scale: float, deconvolve: bool = True, networks="auto", progress=gr.Progress()):
    """Deblur one RGB image (PIL, or float HxWx3 for 16-bit files). Returns (deblurred PIL, motion field
    [3, h/8, w/8] on CPU, pre-reconstruction PIL, tiles used, tile size used, seconds in the model, kernel, blur
    confidence, networks' weight)."""
    pipe = get_pipeline()
    if tile_size == 0:  # auto: the pipeline's default (speed at bounded memory)
        from glow.pipeline_glowdeblur import DEFAULT_TILE_SIZE

        tile_size = DEFAULT_TILE_SIZE
    if tile_size:
        tile_overlap = min(tile_overlap, tile_size - TILE_MULTIPLE)
    state = {"tiles": 1}

    def on_tile_end(pipe, tile_index, num_tiles, callback_kwargs):  # every tile of every pass: the progress bar
        state["tiles"] = callback_kwargs["tiles_per_pass"]
        progress(0.05 + 0.9 * (tile_index + 1) / num_tiles, desc="Deblurring")

    started = time.perf_counter()
    output = pipe(
        image,
        prompt=prompt,
        num_inference_steps=steps,
        fidelity=fidelity,
        guidance_scale=guidance_scale,
        deconvolve=deconvolve,
        networks=networks,
        generator=torch.Generator().manual_seed(seed),
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        output_type="pil",
        return_dict=True,
        callback_on_tile_end=on_tile_end,
    )
    motion = output.motion_fields[0]
    kernel = output.kernels[0] if output.kernels else None  # None: a pipeline without blind deconvolution
    confidence = output.blur_confidences[0] if output.blur_confidences else None
    weight = output.networks_weights[0] if getattr(output, "networks_weights", None) else None  # older folders: none
    return (output.images[0], motion, output.prereconstructions[0], state["tiles"], tile_size,
            time.perf_counter() - started, kernel, confidence, weight)


# ---------------------------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------------------------
def _upload_path(value) -> tuple[str | None, str]:
    """The file path and the user's file name of an Image input read with preprocess=False (or a plain path)."""
    if value is None:
        return None, ""
    if isinstance(value, dict):
        path = value.get("path")
        name = value.get("orig_name") or (Path(path).name if path else "")
        return path, name
    return str(value), Path(str(value)).name


def _peek(path: str) -> tuple[tuple[int, int] | None, list[str], bool, bool]:
    """Header-only look at the upload: its size (for the caps, before decoding), notes worth telling the user, and
    whether browsers can show the file as it is (then it is the "before" picture as is: no re-encoding)."""
    notes = []
    try:
        with Image.open(path) as im:
            size = im.size
            wide_colour = bool(im.tile) and "16" in str(im.tile[0][3])  # e.g. rawmode "RGB;16B": 48-bit colour
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"animated {im.format} ({im.n_frames} frames): the first frame was deblurred")
            if im.mode == "CMYK":
                notes.append("CMYK image: converted to RGB")
            sixteen_bit = wide_colour or im.mode.startswith("I;16") or im.mode in ("I", "F")
            if sixteen_bit:
                notes.append("16-bit image: deblurred at full precision; the download is 8-bit")
            # (getexif() may decode a PNG to find its eXIf chunk: last)
            displayable = (im.format in ("JPEG", "PNG", "WEBP") and im.mode in ("RGB", "L") and not wide_colour
                           and getattr(im, "n_frames", 1) == 1 and max(size) <= PREVIEW_LONG_SIDE
                           and im.getexif().get(0x0112, 1) == 1)
            return size, notes, displayable, sixteen_bit
    except Exception:  # not decodable here: load_image gives the readable reason
        return None, notes, False, False


def _friendly(error: Exception, path: str, name: str) -> str:
    """glow.io messages name the server-side temp path; show the user's file name instead."""
    return str(error).replace(f"'{path}'", f"'{name}'" if name else "the upload").replace(path, name or "the upload")


def read_upload(value):
    """Upload -> (PIL image in RGB/RGBA/L, full-precision float HxWx3 model input for 16-bit files or None, file name,
    notes, the file itself when browsers can show it as is). Raises gr.Error with a readable message."""
    path, name = _upload_path(value)
    if not path:
        raise gr.Error("Please upload a photo first (drag and drop, paste, or click to browse).", title="No image")
    size, notes, displayable, sixteen_bit = _peek(path)
    if size is not None:
        w, h = size
        if w * h > MAX_MEGAPIXELS * 1e6:
            raise gr.Error(
                f"'{name}' is {w}x{h} = {w * h / 1e6:.1f} megapixels; this app accepts up to {MAX_MEGAPIXELS:g} MP. "
                "Please downscale it first.", title="Image too large")
    model_input = None
    try:
        image = load_image(path, max_pixels=int(MAX_MEGAPIXELS * 1e6))
        if sixteen_bit:  # the model sees all 16 bits (deconvolution amplifies 8-bit banding); the page shows 8 bits
            array, _ = load_image_array(path, max_pixels=int(MAX_MEGAPIXELS * 1e6))
            model_input = np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3])
    except ImageReadError as e:
        raise gr.Error(_friendly(e, path, name) + ". Supported: JPEG, PNG, WebP, BMP, TIFF, GIF.",
                       title="Cannot read this file") from None
    if min(image.size) < MIN_SIDE:
        raise gr.Error(f"'{name}' is only {image.width}x{image.height} px; GLOWDeblur needs at least "
                       f"{MIN_SIDE}x{MIN_SIDE} px.", title="Image too small")
    if image.mode == "RGBA":
        notes.append("transparency kept: the alpha channel is copied to the PNG download")
    elif image.mode == "L":
        notes.append("grayscale image: the PNG download is grayscale too")
    return image, model_input, name, notes, (path if displayable else None)


def _clamp_settings(fidelity, steps, seed, tile_size, tile_overlap, guidance_scale):
    """API callers can send anything: clamp to the ranges the UI offers (tiles on the pipeline's 64-px grid)."""
    try:
        fidelity = min(1.0, max(0.0, float(DEFAULT_FIDELITY if fidelity is None else fidelity)))
        steps = int(min(MAX_STEPS, max(1, round(float(DEFAULT_STEPS if steps is None else steps)))))
        seed = int(float(seed)) % (2**32) if seed not in (None, "") else DEFAULT_SEED
        tile_size = int(max(0, round(float(tile_size or 0))))  # 0 = auto
        tile_size = tile_size and max(TILE_MULTIPLE, tile_size // TILE_MULTIPLE * TILE_MULTIPLE)
        tile_overlap = int(max(0, round(float(tile_overlap or 0))))
        tile_overlap = -(-tile_overlap // TILE_MULTIPLE) * TILE_MULTIPLE
        guidance_scale = min(10.0, max(1.0, float(1.0 if guidance_scale is None else guidance_scale)))
    except (TypeError, ValueError, OverflowError) as e:
        raise gr.Error(f"Invalid setting: {e}", title="Invalid settings") from None
    return fidelity, steps, seed, tile_size, tile_overlap, guidance_scale


# ---------------------------------------------------------------------------------------------------------------
# Output handling
# ---------------------------------------------------------------------------------------------------------------
def _preview(image: Image.Image) -> Image.Image:
    if max(image.size) <= PREVIEW_LONG_SIDE:
        return image
    preview = image.copy()
    preview.thumbnail((PREVIEW_LONG_SIDE, PREVIEW_LONG_SIDE), Image.LANCZOS)
    return preview


def _purge_old_outputs() -> None:
    if not OUTPUT_DIR.is_dir():
        return
    now = time.time()
    for entry in OUTPUT_DIR.iterdir():
        try:
            if now - entry.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def save_png(image: Image.Image, name: str) -> str:
    _purge_old_outputs()
    folder = OUTPUT_DIR / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in (Path(name).stem or "image"))[:80]
    path = folder / f"{stem}_deblurred.png"
    image.save(path, format="PNG", compress_level=1)  # speed over a few percent of size
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# The event handler (also the /deblur API)
# ---------------------------------------------------------------------------------------------------------------
def deblur(image, prompt, fidelity, steps, seed, tile_size, tile_overlap, guidance_scale, deconvolve=True,
           networks=DEFAULT_NETWORKS, progress=gr.Progress()):
    """Deblur a photo. Returns (before/after pair, motion field picture, pre-reconstruction, PNG path, report).

    Every failure reaches the page as a gr.Error with a readable message, never a stack trace (the log keeps it)."""
    try:
        return _deblur(image, prompt, fidelity, steps, seed, tile_size, tile_overlap, guidance_scale, deconvolve,
                       networks, progress)
    except gr.Error:
        raise
    except (MemoryError, torch.OutOfMemoryError):
        logger.exception("out of memory")
        raise gr.Error("Ran out of memory on this image. Try a smaller tile size (Advanced) or a smaller image.",
                       title="Out of memory") from None
    except Exception as e:
        logger.exception("deblurring failed")
        raise gr.Error(f"Deblurring failed: {type(e).__name__}: {str(e)[:300]}", title="Deblurring failed") from None


def _deblur(image, prompt, fidelity, steps, seed, tile_size, tile_overlap, guidance_scale, deconvolve, networks,
            progress):
    started = time.perf_counter()
    deconvolve = deconvolve is not False
    # "auto" | "always" | "never" (the radio); True / False from Python callers of deblur()
    mode = networks if isinstance(networks, bool) else NETWORKS_MODES.get(str(networks or "auto").strip().lower())
    if mode is None:
        raise gr.Error(f"Unknown networks setting {networks!r}: use one of {', '.join(NETWORKS_MODES)}.",
                       title="Invalid setting")
    networks = mode
    if not deconvolve and networks is False:
        raise gr.Error("With the blur-kernel removal off and the networks set to never there is nothing to do: tick "
                       "\"Estimate and remove this photo's blur kernel\" or set the networks to auto or always.",
                       title="Nothing to do")
    progress(0.0, desc="Reading the image")
    fidelity, steps, seed, tile_size, tile_overlap, guidance_scale = _clamp_settings(
        fidelity, steps, seed, tile_size, tile_overlap, guidance_scale)
    original, model_input, name, notes, display_path = read_upload(image)
    alpha = original.getchannel("A") if original.mode == "RGBA" else None
    rgb = original.convert("RGB")
    w, h = rgb.size
    prompt = str(prompt or "").strip()[:500]

    if not _PIPE_FUTURE.done():
        progress(0.02, desc="Loading the model (first request after start)")
        get_pipeline()
    progress(0.05, desc="Estimating motion and deblurring")
    restored, motion, prerecon, tiles, tile_size, model_s, kernel, confidence, weight = run_pipeline(
        rgb if model_input is None else model_input, prompt, fidelity, steps, seed, tile_size, tile_overlap,
        guidance_scale, deconvolve, networks, progress)

    progress(0.95, desc="Saving")
    if tiles > 1:
        notes.append(f"processed in {tiles} overlapping tiles of at most {tile_size} px")
    restored = restored.convert("RGB")
    if restored.size != rgb.size:  # the pipeline crops its padding; be strict about it
        raise gr.Error(f"Internal error: output size {restored.size} differs from input size {rgb.size}")
    download = restored.convert("L") if original.mode == "L" else restored
    if alpha is not None:
        download = restored.copy()
        download.putalpha(alpha)
    png_path = save_png(download, name)

    before = _preview(rgb)
    after = _preview(restored)
    overlay = draw_motion_field(before, motion, source_size=rgb.size, kernel=kernel)
    before_shown = display_path or before  # the upload itself when browsers can show it: no re-encoding
    settings = (f"{steps} step(s), fidelity {fidelity:.2f}, seed {seed}"
                f"{', prompt: ' + repr(prompt[:80]) if prompt else ''}"
                f"{f', text guidance {guidance_scale:g}' if guidance_scale > 1 else ''}")
    settings = settings if networks is not False else "deconvolution only"
    report = [f"**{name}**: {w}x{h} px ({w * h / 1e6:.2f} MP), {settings} — "
              f"done in {time.perf_counter() - started:.1f} s on {DEVICE} (model {model_s:.1f} s).",
              f"Estimated motion: {describe_motion_field(motion)}."]
    if kernel is not None and confidence is not None and confidence < 1:
        notes.append("no reliable blur found: left as it was" if confidence == 0
                     else f"blur estimate only partly trusted: deconvolution applied at {confidence:.0%}")
    if networks == "auto" and weight is not None and weight < 1:
        notes.append("sharp and clean: the networks were skipped, as they would soften it" if weight == 0
                     else f"little blur or noise: the networks' clean-up applied at {weight:.0%}")
    report += [f"Note: {n}." for n in notes]
    if before.size != rgb.size:
        report.append(f"Pictures on this page are downscaled to {before.width}x{before.height}; "
                      "the PNG download is full resolution.")
    return (before_shown, after), overlay, _preview(prerecon.convert("RGB")), png_path, "\n\n".join(report)


# ---------------------------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------------------------
def list_examples() -> list[str]:
    exts = {".jpg", ".jpeg", ".png", ".webp"}
    return [str(p) for p in sorted(EXAMPLES_DIR.iterdir()) if p.suffix.lower() in exts] if EXAMPLES_DIR.is_dir() else []


INTRO = """# GLOWDeblur
Real-world deblurring: motion blur, camera shake, defocus. Upload a blurry photo (drag and drop, paste or browse), then
press **Deblur**. The model first estimates this photo's blur kernel by optimisation and deconvolves the photo with
it, then small networks remove noise and ringing (the *pre-reconstruction*) and a diffusion transformer restores fine
detail. Runs on a laptop CPU."""

MOTION_HELP = ("Each mark is the blur estimated there, at true scale: a line is a streak (motion / shake) of that "
               "length and direction; a circle is isotropic blur (defocus) of that diameter. Colour = direction "
               "(see the ring). The inset in the corner is the estimated blur kernel itself.")

CSS = """
#deblur-btn {min-height: 48px}
footer {display: none !important}
"""

with gr.Blocks(title="GLOWDeblur", delete_cache=(3600, 3600)) as demo:
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            input_image = gr.Image(
                label="Blurry photo", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                height=360, elem_id="input-image",
            )
            prompt = gr.Textbox(value="", label="Describe the scene (optional)", max_lines=2, max_length=500,
                                placeholder="e.g. a street with parked cars and a shop sign",
                                info="Semantic guidance: a few words about what is in the picture.")
            fidelity = gr.Slider(0.0, 1.0, value=DEFAULT_FIDELITY, step=0.05, label="Detail ⟷ Fidelity",
                                 info="1 = the deconvolution only (most faithful); lower = more restored detail.")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps",
                                  info="Diffusion refinement steps.")
                seed = gr.Number(value=DEFAULT_SEED, precision=0, minimum=0, label="Seed")
            with gr.Accordion("Advanced: tiling and text guidance", open=False):
                tile_size = gr.Slider(0, 2048, value=0, step=TILE_MULTIPLE, label="Tile size (px, 0 = auto)",
                                      info="Big images are processed tile by tile, so memory stays bounded; smaller "
                                           "tiles use less memory. Auto = the model's default tile size.")
                tile_overlap = gr.Slider(0, 256, value=64, step=TILE_MULTIPLE, label="Tile overlap (px)",
                                         info="Tiles are blended over this overlap (no seams).")
                guidance_scale = gr.Slider(1.0, 5.0, value=1.0, step=0.5, label="Text guidance scale",
                                           info="> 1 follows the scene description more strongly (twice the work).")
            deconvolve = gr.Checkbox(value=DEFAULT_DECONVOLVE, label="Estimate and remove this photo's blur kernel",
                                     info="Best on camera shake; adds about 5 s. Off: the networks alone (faster; "
                                          "they only denoise and clean up).")
            networks = gr.Radio(list(NETWORKS_MODES), value=DEFAULT_NETWORKS, label="Clean up with the networks",
                                info="They remove noise, JPEG blocks and ringing, but soften fine detail. Auto: only "
                                     "on photos that are blurred or noisy (a sharp, clean photo comes back as it "
                                     "was); never: the deconvolution alone.")
            run = gr.Button("Deblur", variant="primary", elem_id="deblur-btn")
        with gr.Column(scale=2, min_width=420):
            slider = gr.ImageSlider(label="Before / after", type="pil", elem_id="before-after", max_height=640)
            with gr.Row():
                motion_view = gr.Image(label="Estimated motion field", type="pil", elem_id="motion-field",
                                       interactive=False)
                prerecon_view = gr.Image(label="Pre-reconstruction (deconvolution + U-Net)", type="pil",
                                         elem_id="prereconstruction", interactive=False)
            gr.Markdown(MOTION_HELP)
            download = gr.File(label="Full-resolution PNG", elem_id="download", interactive=False)
            report = gr.Markdown(label="Report", elem_id="report")
    examples = list_examples()
    if examples:
        gr.Examples(examples=[[p] for p in examples], inputs=[input_image], label="Examples (click one, then Deblur)",
                    examples_per_page=12, elem_id="examples")
    gr.Markdown(f"Model: `{MODEL_ID if os.environ.get('GLOW_MODEL') else 'glow/default_model'}` on {DEVICE}. "
                f"Uploads up to {MAX_MEGAPIXELS:g} MP / {MAX_UPLOAD}.")

    run.click(
        deblur,
        inputs=[input_image, prompt, fidelity, steps, seed, tile_size, tile_overlap, guidance_scale, deconvolve,
                networks],
        outputs=[slider, motion_view, prerecon_view, download, report],
        api_name="deblur",
        # Raw input payloads: the upload reaches glow.io.load_image untouched (Gradio's own decoding would turn a
        # corrupt file into an opaque error and 16-bit files into clipped 8-bit ones).
        preprocess=False,
    )

demo.queue(default_concurrency_limit=1, max_size=16)  # 2 CPU cores: one image at a time, torch uses both

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD, css=CSS, show_error=False)
