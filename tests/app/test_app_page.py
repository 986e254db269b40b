"""The interactive page, launched on localhost for a tiny exported model: driven through its API with
gradio_client as a script would, and clicked in headless Chromium (Debian's package) as a user would."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.generation import SIZE, nudged_export
from PIL import Image

pytestmark = pytest.mark.slow  # a launched server, a browser: about 40 s on 2 cores
gradio = pytest.importorskip("gradio", reason="the page needs the app extra: pip install -e '.[dev]'")
from gradio_client import Client, handle_file  # noqa: E402

from sdm.core.configs import compose  # noqa: E402
from sdm.data.classes import SIDEWALK  # noqa: E402
from sdm.generation.layout import sample_seed  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(client, page, url, run) for a launched page of a tiny nudged export with 3 validation masks."""
    from sdm.app.__main__ import page_of

    root = tmp_path_factory.mktemp("app")
    run = nudged_export(root / "run")
    cfg = compose("app", [f"weights={run}", "masks=3", f"work_dir={root / 'zips'}", "device=cpu", "port=null"])
    page = page_of(cfg)
    page.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield Client(page.local_url, verbose=False), page, page.local_url, run
    finally:
        page.close()


def canvas_of(path: str | Path) -> dict:
    """An image editor value showing the PNG at `path`, as the browser sends one."""
    return {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path))}


def images_of(gallery: list[dict]) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery]


def test_a_validation_mask_gives_the_pipelines_images_and_a_zip_of_them(app):
    from sdm.pipelines.save import pipeline_from_weights

    client, _, _, run = app
    names = client.view_api(return_format="dict")["named_endpoints"]["/show_mask"]["parameters"][0]
    assert len(names["type"]["enum"]) == 3  # the first 3 validation masks of the run's data
    canvas = client.predict(names["type"]["enum"][1], api_name="/show_mask")
    gallery, archive = client.predict(canvas_of(canvas["composite"]), 3, 1.5, 2, 7, api_name="/generate")
    assert [item["caption"] for item in gallery] == ["mask", "image 0", "image 1", "image 2"]
    ids = SIDEWALK.decolorize(np.asarray(Image.open(canvas["composite"]).convert("RGB")))
    pipe = pipeline_from_weights(run)
    generators = [torch.Generator().manual_seed(sample_seed(7, k)) for k in range(3)]
    expected = pipe(ids, num_images_per_mask=3, guidance_scale=1.5, num_inference_steps=2, generator=generators).images
    shown = images_of(gallery)
    assert np.array_equal(shown[0], SIDEWALK.colorize(ids))
    for got, want in zip(shown[1:], expected, strict=True):
        assert np.array_equal(got, np.asarray(want))  # seeded as sample.py seeds sample k of a mask
    assert not np.array_equal(shown[1], shown[2])
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["colored_masks/mask-seed7.png", *[f"images/mask-seed7_{k}.png" for k in range(3)],
                                             "labels/mask-seed7.png"]
        label = np.asarray(Image.open(io.BytesIO(bundle.read("labels/mask-seed7.png"))))
        assert np.array_equal(label, ids)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(bundle.read("images/mask-seed7_2.png")))), shown[3])


def test_an_upload_is_drawn_on_the_canvas_and_bad_ones_are_told_why(app, tmp_path):
    client = app[0]
    ids = np.zeros((SIZE, SIZE), np.uint8)
    ids[SIZE // 2 :] = 8
    Image.fromarray(ids, "L").save(tmp_path / "ids.png")
    canvas = client.predict(handle_file(str(tmp_path / "ids.png")), api_name="/load_upload")
    assert np.array_equal(np.asarray(Image.open(canvas["composite"]).convert("RGB")), SIDEWALK.colorize(ids))
    bad = {
        "big.png": (np.zeros((SIZE * 2, SIZE), np.uint8), f"big.png is {SIZE}x{SIZE * 2} (width x height); this "
                                                         f"model makes {SIZE}x{SIZE} images"),
        "ids.png": (np.full((SIZE, SIZE), 77, np.uint8), "ids.png: "),
        "odd.png": (np.dstack([ids * 0 + 1, ids * 0 + 2, ids * 0 + 250]), "odd.png: RGB label is not a palette-coloured"),
    }
    for name, (array, message) in bad.items():
        Image.fromarray(array).save(tmp_path / name)
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
            client.predict(handle_file(str(tmp_path / name)), api_name="/load_upload")
        assert type(caught.value).__name__ == "AppError"  # shown in the page, not a server crash
    with pytest.raises(Exception, match="nothing painted yet"):
        client.predict(None, 1, 1.5, 2, 0, api_name="/generate")


def test_painted_strokes_are_snapped_to_the_classes_they_lie_between(app, tmp_path):
    client = app[0]
    ids = np.zeros((SIZE, SIZE), np.uint8)
    ids[:, SIZE // 2 :] = 8
    rgb = SIDEWALK.colorize(ids).astype(np.float64)
    rgb[:, SIZE // 2 - 1] = 0.5 * rgb[:, SIZE // 2 - 1] + 0.5 * rgb[:, SIZE // 2]  # a stroke's soft edge
    Image.fromarray(rgb.round().astype(np.uint8)).save(tmp_path / "painted.png")
    _, archive = client.predict(canvas_of(tmp_path / "painted.png"), 1, 1.0, 1, 0, api_name="/generate")
    with zipfile.ZipFile(archive) as bundle:
        label = np.asarray(Image.open(io.BytesIO(bundle.read("labels/mask-seed0.png"))))
    assert set(np.unique(label[:, SIZE // 2 - 1])) <= {0, 8} and np.array_equal(label[:, : SIZE // 2 - 1], ids[:, : SIZE // 2 - 1])
    for settings in ((1, 1.5, 0, 0), (9, 1.5, 2, 0), (1, 1.5, 2, -1)):  # 0 steps, 9 images, a negative seed
        with pytest.raises(Exception, match=r"Value (0|9|-1) is (less|greater) than (minimum|maximum) value"):
            client.predict(canvas_of(tmp_path / "painted.png"), *settings, api_name="/generate")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_headless_chromium_and_generate_shows_images(app, tmp_path):
    browser_path = chromium()
    if browser_path is None:
        if os.environ.get("SDM_REQUIRE_CHROMIUM"):
            pytest.fail("SDM_REQUIRE_CHROMIUM is set but no chromium is installed (.ci/run installs it)")
        pytest.skip("no chromium here (apt-get install chromium); CI installs it")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url = app[2]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.goto(url)
            tab.wait_for_selector("#generate", timeout=60_000)
            assert tab.locator("#legend").inner_text().count("flat-sidewalk") == 1  # the class legend
            assert tab.locator("#canvas canvas, #canvas img").count() >= 1  # the mask on the canvas
            tab.click("#generate")
            tab.wait_for_function("document.querySelectorAll('#results img').length >= 6", timeout=120_000)
            tab.wait_for_selector("#archive a", timeout=60_000)  # the zip to download
            tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_command_names_missing_weights_in_one_line():
    done = subprocess.run([sys.executable, "-m", "sdm.app", "weights=/nowhere/run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("error: weights=/nowhere/run: nothing there; run `make demo` "
                                                    "first (it trains runs/demo/train) or pass weights=<run dir | "
                                                    "export dir | .ckpt | .safetensors>")
