"""The written evaluation: evaluation.json (every number), evaluation_report.txt, TensorBoard.

Beside each number stands what it should be compared with: the segmenter's mIoU on real
images (the ceiling), the other-mask baseline, and the figures the paper or the seed
project give where one is comparable. Names say which metrics are the published ones
(FID, LPIPS) and which are this project's weight-free stand-ins.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from sdm.core.atomic import write_atomically

JSON_FILE = "evaluation.json"
TEXT_FILE = "evaluation_report.txt"
HTML_FILE = "evaluation.html"
PICTURES_DIR = "evaluation"


@dataclass(frozen=True)
class MetricRow:
    key: str
    title: str
    better: str  # "lower" | "higher"
    reference: str  # comparable published figures, "" when none


METRIC_ROWS = (
    MetricRow("fid", "FID (Inception, the published metric)", "lower",
              "paper, 256 px: ADE20K 27.5, COCO-Stuff 15.9; seed's promise at 1024 px: 15-25"),
    MetricRow("kid", "KID (Inception; unbiased, for small sets)", "lower", ""),
    MetricRow("segmenter_frechet_distance", "Fréchet distance in the segmenter's features (not FID)", "lower", ""),
    MetricRow("lpips_diversity", "LPIPS diversity (AlexNet, the paper's)", "higher",
              "seed's promise at 1024 px: 0.3-0.5"),
    MetricRow("ms_ssim_diversity", "pixel diversity, 1 - MS-SSIM (not LPIPS)", "higher", ""),
    MetricRow("miou", "consistency: mIoU of the segmenter vs the input mask", "higher",
              "paper (own segmenters): ADE20K 39.2, COCO-Stuff 40.2; seed's promise: 0.6-0.8"),
    MetricRow("real_miou", "ceiling: the same segmenter on real photos", "higher", ""),
    MetricRow("blur_control_miou", "blur control: the real photos blurred (down, up)", "lower",
              "an instrument that sees detail scores it clearly below the ceiling"),
    MetricRow("consistency_ratio", "consistency ratio (generated / real mIoU)", "higher", "1.0 = as good as real"),
    MetricRow("blur_control_ratio", "blur control ratio (blurred / real mIoU)", "lower",
              "a generator should beat it; near 1 = the instrument cannot see detail"),
    MetricRow("other_mask_miou", "baseline: mIoU vs a different mask", "lower", "far below mIoU = the mask is followed"),
    MetricRow("pixel_accuracy", "pixel accuracy vs the input mask", "higher", ""),
)
HISTORY_KEYS = ("fid", "segmenter_frechet_distance", "miou", "consistency_ratio", "ms_ssim_diversity",
                "lpips_diversity")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("sdm", "torch", "torchmetrics", "torch-fidelity", "lpips", "lightning", "diffusers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def history(report: dict[str, Any], run_dir: Path | None, own_folder: Path) -> list[dict[str, Any]]:
    """This evaluation and the earlier ones of the same run (its other sample folders), oldest first."""
    rows = []
    others = sorted(run_dir.glob(f"samples/*/{JSON_FILE}")) if run_dir else []
    for path in others:
        if path.parent.resolve() == own_folder.resolve():
            continue
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rows.append(history_row(old, path.parent.name))
    rows.append(history_row(report, own_folder.name))
    return sorted(rows, key=lambda row: row["created"])


def history_row(report: dict[str, Any], folder: str) -> dict[str, Any]:
    sampler = report.get("settings", {}).get("sampler", {})
    metrics = report.get("metrics", {})
    return {"folder": folder, "created": report.get("created", ""), "sampler": sampler.get("name", ""),
            "steps": sampler.get("num_steps", ""), "guidance": sampler.get("guidance_scale", ""),
            **{key: metrics.get(key) for key in HISTORY_KEYS}}


def instrument_line(report: dict[str, Any]) -> str | None:
    """The verdict on the consistency segmenter, the first line of every report (None: no segmenter)."""
    instrument = report.get("instrument")
    if not instrument:
        return None
    return ("" if instrument["reliable"] else "WARNING: ") + instrument["summary"]


def calibration_scale(metrics: dict[str, Any]) -> str | None:
    """Where the generated images stand between the blur control and the real photos, as ratios."""
    if "consistency_ratio" not in metrics or "blur_control_ratio" not in metrics:
        return None
    marks = sorted([(metrics["blur_control_ratio"], "blur control"), (metrics["consistency_ratio"], "generated"),
                    (1.0, "real")], key=lambda pair: pair[0])
    return " < ".join(f"{name} {format_value(value)}" for value, name in marks)


def flagged_unreliable(report: dict[str, Any], key: str) -> bool:
    """True for the consistency ratio of a report whose instrument cannot judge detail."""
    instrument = report.get("instrument")
    return key == "consistency_ratio" and bool(instrument) and not instrument["reliable"]


def text_report(report: dict[str, Any]) -> str:
    """The plain-text summary: the instrument's verdict, the metric table, notes, and where everything is."""
    metrics = report["metrics"]
    counts = report["counts"]
    verdict = instrument_line(report)
    lines = [verdict] if verdict else []
    lines += [f"evaluation of {report['set']['root']} ({counts['masks']} masks, {counts['images']} images, "
             f"{counts['real']} real photos, {report['set']['size'][0]}x{report['set']['size'][1]})"]
    settings = report.get("settings", {}).get("sampler")
    if settings:
        lines.append(f"sampler {settings['name']}, {settings['num_steps']} steps, guidance {settings['guidance_scale']}")
    lines.append("")
    width = max(len(row.title) for row in METRIC_ROWS)
    for row in METRIC_ROWS:
        if row.key in metrics:
            arrow = "(lower is better)" if row.better == "lower" else "(higher is better)"
            reference = f"   [{row.reference}]" if row.reference else ""
            lines.append(f"  {row.title:<{width}}  {format_value(metrics[row.key]):>8}  {arrow}{reference}"
                         f"{'  UNRELIABLE' if flagged_unreliable(report, row.key) else ''}")
    source = report.get("sources", {}).get("real_miou")
    if source:
        lines.append(f"  (ceiling from {source})")
    scale = calibration_scale(metrics)
    if scale:
        lines.append(f"  consistency on the instrument's scale: {scale}")
    if report["notes"]:
        lines += ["", "notes:"] + [f"  - {note}" for note in report["notes"]]
    lines += ["", f"every number: {report['files']['json']}", f"the page: {report['files']['html']}"]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def log_to_tensorboard(report: dict[str, Any], logdir: Path) -> None:
    """The metrics as scalars and in the HParams tab, keyed by the sampler settings."""
    from torch.utils.tensorboard import SummaryWriter

    sampler = report.get("settings", {}).get("sampler", {})
    hparams: dict[str, Any] = {"set": str(report["set"]["root"])}
    hparams.update({f"sampler/{k}": v for k, v in sampler.items() if isinstance(v, int | float | str | bool)})
    metrics = {f"eval/{k}": float(v) for k, v in report["metrics"].items()
               if isinstance(v, int | float) and math.isfinite(v)}
    instrument = report.get("instrument")
    if instrument:
        metrics["eval/instrument_reliable"] = float(instrument["reliable"])
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.add_hparams(hparams, metrics, run_name=".")
        if instrument:
            writer.add_text("eval/instrument", instrument_line(report) or "")
