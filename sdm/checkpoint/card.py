"""The model card (README.md) beside an export: Hub front matter, how the model was trained, what
its last evaluation measured (with the instrument that measured it), a sample grid, how to use it,
and the terms of its training data. Written with the export, and again by every evaluation of the
run, so the numbers on the card are the newest ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sdm.core.atomic import write_atomically

CARD = "README.md"
SAMPLES = "samples.png"  # the evaluation's picture of masks and samples, copied beside the card
SIDEWALK_ID = "segments/sidewalk-semantic"
# report metric -> (model-index type, what it is); the consistency ones name their segmenter
METRICS = {
    "miou": ("miou", "semantic consistency: mIoU of the segmenter on the samples against their masks"),
    "consistency_ratio": ("consistency_ratio", "the samples' mIoU over the real photos' mIoU (1 = as readable as real)"),
    "real_miou": ("real_miou", "the segmenter's mIoU on the real photos of the same masks (its ceiling)"),
    "blur_control_ratio": ("blur_control_ratio", "blurred real photos over real (below it: blurrier than the control)"),
    "fid": ("fid", "FID against the real photos (Inception pool features)"),
    "kid": ("kid", "KID against the real photos"),
    "diversity_lpips": ("lpips_diversity", "LPIPS between the samples of one mask (higher: more diverse)"),
}


def licence_of(data: dict[str, Any]) -> tuple[str, str]:
    """(Hub licence id, the sentence on the card) for the training data."""
    if data.get("name") == "scenes":
        return "mit", ("The model was trained on sdm's procedurally generated street scenes, which carry the "
                       "project's own MIT licence, as do these weights.")
    if str(data.get("path", "")) == SIDEWALK_ID or data.get("name") == "sidewalk":
        return "cc-by-nc-4.0", ("The model was trained on `segments/sidewalk-semantic`, released under CC BY-NC 4.0; "
                                "the weights and the images they make are shared under the same terms "
                                "(attribution, non-commercial use only).")
    return "other", (f"The model was trained on `{data.get('path', data.get('name'))}`: its licence applies to the "
                     "weights and to the images they make. Set `license` above to it before sharing.")


def front_matter(config: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    data = config.get("data", {})
    licence, _ = licence_of(data)
    matter: dict[str, Any] = {
        "library_name": "diffusers", "pipeline_tag": "image-to-image", "license": licence,
        "tags": ["semantic-image-synthesis", "diffusion", "sdm", "spade", "label-to-image"],
    }
    if data.get("name") == "sidewalk" or str(data.get("path", "")) == SIDEWALK_ID:
        matter["datasets"] = [SIDEWALK_ID]
    metrics = [{"type": METRICS[key][0], "name": METRICS[key][1], "value": float(value)}
               for key, value in ((report or {}).get("metrics") or {}).items()
               if key in METRICS and isinstance(value, int | float)]
    if metrics:
        instrument = segmenter_name(report or {})
        for metric in metrics:
            if metric["type"] in ("miou", "consistency_ratio", "real_miou", "blur_control_ratio"):
                metric["name"] += f" ({instrument})"
        matter["model-index"] = [{"name": str(config.get("run_name", "sdm")), "results": [{
            "task": {"type": "image-to-image", "name": "Semantic image synthesis"},
            "dataset": {"type": str(data.get("path") or data.get("name")), "name": str(data.get("name")),
                        "split": str((report or {}).get("settings", {}).get("masks", "val"))},
            "metrics": metrics}]}]
    return matter


def segmenter_name(report: dict[str, Any]) -> str:
    """The instrument of a report's consistency scores, as the card names it."""
    segmenter = report.get("segmenter") or {}
    arch = segmenter.get("arch")
    where = segmenter.get("folder", "no segmenter")
    return f"segmenter {arch} w{segmenter.get('width')} at {where}" if arch else f"segmenter {where}"


def model_card(config: dict[str, Any], report: dict[str, Any] | None = None, samples: bool = False) -> str:
    """README.md of an export: `config` is its config.yaml, `report` the newest evaluation.json."""
    data, model, trainer = config.get("data", {}), config.get("model", {}), config.get("trainer", {})
    name = str(config.get("run_name", "sdm"))
    _, terms = licence_of(data)
    size = "x".join(str(v) for v in data.get("size", []))
    trained = [
        f"- recipe: `{name}` (sdm's Hydra config, saved whole in `config.yaml`); network `{model.get('name')}` "
        f"({model.get('model_channels')} channels, levels {model.get('channel_mult')}, "
        f"{'learned' if model.get('learn_sigma') else 'fixed'} variance{', edge channel' if model.get('edge_channel') else ''})",
        f"- data: `{data.get('path', data.get('name'))}` ({data.get('num_classes')} classes, table "
        f"`{(data.get('classes') or {}).get('name', 'sidewalk')}`) at {size}",
    ]
    if trainer:
        optim = config.get("optim", {})
        trained.append(f"- {trainer.get('max_steps')} steps, batch {data.get('batch_size')} per device, lr "
                       f"{optim.get('lr')}, EMA {config.get('ema', {}).get('decay')}, mask dropout "
                       f"{config.get('guidance', {}).get('drop_prob')} (classifier-free guidance), "
                       f"{trainer.get('precision')}")
    if config.get("converted_from"):
        trained.append(f"- converted from the authors' checkpoint `{config['converted_from'].get('checkpoint')}` "
                       f"({config['converted_from'].get('code')})")
    evaluation = ["No evaluation of this model yet: `python sample.py weights=<this folder> evaluate=true` "
                  "measures it and writes the numbers here."]
    if report and report.get("metrics"):
        rows = [f"| {key} | {float(value):.4g} | {METRICS[key][1]} |" for key, value in report["metrics"].items()
                if key in METRICS and isinstance(value, int | float)]
        counts = report.get("counts", {})
        sampler = report.get("settings", {}).get("sampler", {})
        evaluation = [f"{counts.get('images')} samples of {counts.get('masks')} masks, {sampler.get('name')} "
                      f"{sampler.get('num_steps')} steps, guidance {sampler.get('guidance_scale')}; consistency by "
                      f"{segmenter_name(report)}.", "", "| metric | value | what it is |", "|---|---|---|", *rows]
    picture = [f"![masks and samples]({SAMPLES})", ""] if samples else []
    body = [
        f"# {name}", "",
        "A semantic image synthesis model (SDM, Wang et al. 2022, arXiv 2207.00050): a U-Net whose decoder is "
        "conditioned on a label map through SPADE makes photographs of the scene the map describes, to grow "
        "segmentation datasets with correctly labelled images. Made with sdm.", "",
        *picture,
        "## Use", "",
        "```python",
        "from sdm.pipelines import SDMPipeline  # pip install sdm; sdm-diffusers <this folder> writes the pipeline",
        "pipe = SDMPipeline.from_pretrained(\"<pipeline folder>\")",
        "images = pipe(label_map, num_images_per_mask=5, guidance_scale=1.5, num_inference_steps=15).images",
        "```", "",
        "or `python sample.py weights=<this folder> masks=<folder of label PNGs>`.", "",
        "## How it was trained", "", *trained, "",
        "## Evaluation", "", *evaluation, "",
        "## License", "", terms, "",
    ]
    return "---\n" + yaml.safe_dump(front_matter(config, report), sort_keys=False) + "---\n\n" + "\n".join(body)


def write_model_card(folder: str | Path, config: dict[str, Any], report: dict[str, Any] | None = None) -> Path:
    """Write (or refresh) README.md in an export folder, atomically."""
    folder = Path(folder)
    text = model_card(config, report, samples=(folder / SAMPLES).is_file())
    write_atomically(folder / CARD, lambda tmp: Path(tmp).write_text(text))
    return folder / CARD
