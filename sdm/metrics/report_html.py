"""The evaluation page: one self-contained HTML file beside its pictures, no scripts from outside.

Metric table with ceilings, baselines and published figures; a per-class IoU bar chart
(inline SVG, bars in the class colours, the real-photo ceiling beside each); the best and
worst masks with the segmenter's reading of each sample; earlier evaluations of the run.
A few lines of script mark on <body> how many images loaded, so a headless browser can check.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from sdm.data.classes import CLASS_NAMES, PALETTE
from sdm.metrics.report import (
    HISTORY_KEYS,
    METRIC_ROWS,
    flagged_unreliable,
    format_value,
    instrument_line,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #a40; }
img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
.legend span { display: inline-block; margin-right: 1.5em; }
.verdict { padding: 0.6em 1em; border-radius: 4px; }
.verdict.unreliable { background: #fde2dd; border: 2px solid #b3261e; font-weight: bold; }
.verdict.reliable { background: #e3f4e1; border: 1px solid #2e7d32; }
td.unreliable { color: #b3261e; text-decoration: line-through; }
"""
SCRIPT = """
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = loaded + '/' + images.length;
});
"""


def metric_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    rows = []
    for row in METRIC_ROWS:
        if row.key not in metrics:
            continue
        flagged = flagged_unreliable(report, row.key)
        value = format_value(metrics[row.key]) + (" (unreliable)" if flagged else "")
        rows.append(f"<tr data-metric='{row.key}'><td>{escape(row.title)}</td>"
                    f"<td class='num{' unreliable' if flagged else ''}'>{value}</td><td>{row.better}</td>"
                    f"<td>{escape(row.reference)}</td></tr>")
    head = "<tr><th>metric</th><th>value</th><th>better</th><th>compare with</th></tr>"
    return f"<table id='metrics'>{head}{''.join(rows)}</table>"


def verdict_banner(report: dict[str, Any]) -> str:
    instrument = report.get("instrument")
    if not instrument:
        return ""
    kind = "reliable" if instrument["reliable"] else "unreliable"
    return f"<p id='instrument' class='verdict {kind}' data-reliable='{str(instrument['reliable']).lower()}'>" \
           f"{escape(instrument_line(report) or '')}</p>"


def calibration_bar(metrics: dict[str, Any]) -> str:
    """The consistency ratio on a 0..1 line between the blur control and the real photos."""
    if "consistency_ratio" not in metrics or "blur_control_ratio" not in metrics:
        return ""
    width, pad = 600, 10
    marks = [(metrics["blur_control_ratio"], "blur control", "#888"), (1.0, "real", "#2e7d32"),
             (metrics["consistency_ratio"], "generated", "#1565c0")]
    parts = [f"<line x1='{pad}' y1='30' x2='{pad + width}' y2='30' stroke='#999'/>"]
    for i, (value, name, colour) in enumerate(marks):
        if not math.isfinite(value):  # a zero ceiling: no ratio to place
            continue
        x = pad + width * min(max(value, 0.0), 1.2) / 1.2
        y = 14 if i % 2 == 0 else 52
        parts.append(f"<circle cx='{x:.1f}' cy='30' r='6' fill='{colour}'><title>{name} {format_value(value)}</title></circle>"
                     f"<text x='{x:.1f}' y='{y}' font-size='12' text-anchor='middle' fill='{colour}'>"
                     f"{name} {format_value(value)}</text>")
    return (f"<svg id='calibration' xmlns='http://www.w3.org/2000/svg' width='{width + 2 * pad}' height='60'>"
            f"{''.join(parts)}</svg>")


def class_chart(per_class: dict[str, dict[str, Any]], classes: dict[str, Any] | None = None) -> str:
    """Horizontal bars for the classes of the masks: the generated IoU in the class colour, the
    real-photo IoU as a thin black bar under it. `classes` is the report's class table (names,
    palette); reports written before tables were recorded are sidewalk's."""
    names = tuple((classes or {}).get("names") or CLASS_NAMES)
    palette = [tuple(c) for c in (classes or {}).get("palette") or PALETTE.tolist()]
    generated, real = per_class.get("generated", {}), per_class.get("real", {})
    pixels = per_class.get("mask_pixels", {})
    classes = [c for c in generated if pixels.get(c, 0) > 0]
    if not classes:
        return "<p>no class was scored</p>"
    row_h, label_w, bar_w = 18, 260, 420
    total = max(1, sum(pixels[c] for c in classes))
    parts = []
    for i, c in enumerate(classes):
        y = i * row_h
        colour = "rgb({},{},{})".format(*(int(v) for v in palette[int(c)])) if int(c) < len(palette) else "grey"
        value, ceiling = generated.get(c), real.get(c)
        name = names[int(c)] if int(c) < len(names) else str(c)
        share = pixels[c] / total
        parts.append(f"<text x='0' y='{y + 13}' font-size='12'>{int(c)} {escape(name)} ({share:.1%})</text>")
        width = bar_w * (value or 0.0)
        parts.append(f"<rect class='bar' x='{label_w}' y='{y + 2}' width='{width:.1f}' height='{row_h - 6}' "
                     f"fill='{colour}' stroke='#333' stroke-width='0.5'><title>IoU {format_value(value)}</title></rect>")
        if ceiling is not None:
            parts.append(f"<rect x='{label_w}' y='{y + row_h - 5}' width='{bar_w * ceiling:.1f}' height='2' fill='#000'>"
                         f"<title>real {format_value(ceiling)}</title></rect>")
        parts.append(f"<text x='{label_w + bar_w + 8}' y='{y + 13}' font-size='12'>{format_value(value)}"
                     f"{' / ' + format_value(ceiling) if ceiling is not None else ''}</text>")
    height = row_h * len(classes)
    return (f"<svg id='per-class' xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 120}' "
            f"height='{height}'>{''.join(parts)}</svg>")


def history_table(rows: list[dict[str, Any]]) -> str:
    keys = ("folder", "created", "sampler", "steps", "guidance", *HISTORY_KEYS)
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = []
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key)
            text = format_value(value) if isinstance(value, float) else escape(str(value if value is not None else ""))
            cells.append(f"<td{' class=num' if isinstance(value, float) else ''}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table id='history'><tr>{head}</tr>{''.join(body)}</table>"


def page(report: dict[str, Any], pictures: dict[str, str], history_rows: list[dict[str, Any]]) -> str:
    """The whole page; `pictures` maps a caption to a path relative to the page."""
    counts, info = report["counts"], report["set"]
    sampler = report.get("settings", {}).get("sampler")
    subtitle = (f"{counts['masks']} masks, {counts['images']} images, {counts['real']} real photos, "
                f"{info['size'][0]}x{info['size'][1]}")
    if sampler:
        subtitle += f"; {sampler['name']} {sampler['num_steps']} steps, guidance {sampler['guidance_scale']}"
    notes = "".join(f"<li class='note'>{escape(n)}</li>" for n in report["notes"])
    segmenter = report.get("segmenter") or {}
    images = "".join(f"<h3>{escape(caption)}</h3><img src='{escape(path)}' alt='{escape(caption)}'>"
                     for caption, path in pictures.items())
    legend = ("<p class='legend'><span>each row: mask | real photo (grey: none) | sample, what the segmenter "
              "reads in it | ...</span></p>") if pictures else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdm evaluation: {escape(str(info['root']))}</title>
<style>{STYLE}</style></head>
<body>
{verdict_banner(report)}
<h1>Evaluation of {escape(str(info['root']))}</h1>
<p>{escape(subtitle)}. Created {escape(report['created'])}.</p>
{metric_table(report)}
{calibration_bar(report['metrics'])}
<p>Segmenter: {escape(str(segmenter.get('folder', 'none')))}
{escape(f"({segmenter['arch']}, real held-out mIoU {format_value(segmenter.get('real_val_miou'))})")
 if segmenter.get('arch') else ''}</p>
{f'<ul>{notes}</ul>' if notes else ''}
<h2>Per-class IoU</h2>
<p>Classes of the masks (share of their pixels). Coloured bar: IoU of the generated images against their masks; black line: the same segmenter on the real photos.</p>
{class_chart(report.get('per_class_iou', {}), report.get('classes'))}
<h2>Best and worst masks by consistency</h2>
{legend}{images}
<h2>Evaluations of this run</h2>
{history_table(history_rows)}
<script>{SCRIPT}</script>
</body></html>
"""
