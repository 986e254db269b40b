"""The interactive page: a mask on a canvas (a validation mask, an upload, or painted), settings, images.

The canvas always holds the mask that will be used: picking a validation mask or uploading a label PNG
draws it there in the class colours, and when Generate reads it, strokes painted over it become
classes (their anti-aliased edges one of the two classes they lie between: sdm.app.masks). Sample k is seeded as sample.py seeds sample k of the first mask
(`sample_seed(seed, k)`), so a generation here can be reproduced from the command line.
"""

from __future__ import annotations

import html
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from sdm.app.masks import MaskError, bundle, painted_ids, uploaded_ids
from sdm.generation.layout import sample_seed
from sdm.pipelines import SDMPipeline

MAX_IMAGES = 8
MAX_STEPS = 100


def hex_colour(rgb: np.ndarray) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def legend_html(pipe: SDMPipeline) -> str:
    """The class names beside their colours: which brush colour paints which class."""
    table = pipe.table
    items = "".join(f'<span class="sdm-class"><i style="background:{hex_colour(c)}"></i>{i} '
                    f'{html.escape(name)}</span>' for i, (name, c) in enumerate(zip(table.names, table.palette, strict=True)))
    style = ("<style>.sdm-class{display:inline-flex;align-items:center;margin:0 .8em .3em 0;font-size:.85em}"
             ".sdm-class i{width:1em;height:1em;margin-right:.3em;border:1px solid #8888;display:inline-block}"
             "#canvas canvas,#canvas img,#results img{image-rendering:pixelated}</style>")  # masks: no blur
    return f'{style}<div id="legend">{items}</div>'


def canvas_value(colours: np.ndarray) -> dict[str, Any]:
    """An image editor's value that shows `colours` (H x W x 3) with nothing painted over it yet."""
    return {"background": colours, "layers": [], "composite": colours}


def build_page(pipe: SDMPipeline, masks: dict[str, np.ndarray], work_dir: Path, title: str = "SDM") -> gr.Blocks:
    """The page for one pipeline; `masks` (name -> class ids at the model's size) fill the picker."""
    table = pipe.table
    size = tuple(int(v) for v in pipe.config.image_size)
    palette = [hex_colour(c) for c in table.palette]
    first = next(iter(masks), None)

    def show(name: str | None) -> dict[str, Any]:
        """The named mask on the canvas; without one, a canvas of class 0 to paint on."""
        ids = masks[name] if name is not None else np.zeros(size, np.uint8)
        return canvas_value(table.colorize(ids))

    def load_upload(path: str | None) -> dict[str, Any] | None:
        if path is None:
            return gr.skip()
        try:
            return canvas_value(table.colorize(uploaded_ids(path, table, size)))
        except MaskError as err:
            raise gr.Error(str(err)) from None

    def generate(canvas: dict | None, count: float, guidance: float, steps: float, seed: float,
                 progress: gr.Progress = gr.Progress()  # noqa: B008 - how Gradio finds its tracker
                 ) -> tuple[list[tuple[Image.Image, str]], str]:
        try:
            ids = painted_ids(canvas, table, size)
        except MaskError as err:
            raise gr.Error(str(err)) from None
        count, steps, seed = int(count), int(steps), int(seed)  # ranges: checked by the sliders, also for API calls
        progress(0, desc="sampling")

        def on_step(i: int, total: int, _x: torch.Tensor) -> None:
            progress((i + 1) / total, desc=f"step {i + 1}/{total}")

        generators = [torch.Generator().manual_seed(sample_seed(seed, k)) for k in range(count)]
        images = pipe(ids, num_images_per_mask=count, guidance_scale=float(guidance), num_inference_steps=steps,
                      generator=generators, callback=on_step).images
        name = f"mask-seed{seed}"
        archive = bundle(images, ids, table, name, work_dir / uuid.uuid4().hex[:8] / f"{name}.zip")
        shown = [(Image.fromarray(table.colorize(ids)), "mask"), *[(im, f"image {k}") for k, im in enumerate(images)]]
        return shown, str(archive)

    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}: label map in, photographs out\nPick a validation mask, upload a label PNG "
                    f"({size[1]}x{size[0]}, class ids or the colours below) or paint over the canvas with the class "
                    "colours; the soft edges of strokes take one of the classes they lie between.")
        with gr.Row():
            with gr.Column():
                pick = gr.Dropdown(list(masks), value=first, label="validation mask", elem_id="pick")
                upload = gr.File(label="or upload a label PNG", file_types=[".png"], type="filepath", elem_id="upload")
                canvas = gr.ImageEditor(
                    value=show(first), type="numpy", image_mode="RGB", label="mask (paint with the class colours)",
                    brush=gr.Brush(colors=palette, default_color=palette[min(1, len(palette) - 1)],
                                   color_mode="fixed"),
                    eraser=False, transforms=(), sources=(), layers=False, canvas_size=(size[1], size[0]),
                    fixed_canvas=True, format="png", elem_id="canvas")
                gr.HTML(legend_html(pipe))
                with gr.Row():
                    count = gr.Slider(1, MAX_IMAGES, value=5, step=1, label="images")
                    guidance = gr.Slider(0.0, 5.0, value=1.5, step=0.1, label="guidance scale (1 = none)")
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="sampling steps")
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="mask and images", columns=3, format="png", elem_id="results")
                archive = gr.File(label="download: images, label PNG and coloured mask (zip)", elem_id="archive")
        pick.change(show, pick, canvas, api_name="show_mask")
        upload.upload(load_upload, upload, canvas, api_name="load_upload")
        go.click(generate, [canvas, count, guidance, steps, seed], [gallery, archive], api_name="generate")
    return page
