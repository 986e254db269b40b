"""The evaluation: image sets, every metric against an oracle, the report, the page, offline use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.evaluation import (
    ConfusedReader,
    DetailReader,
    MeanColour,
    PaletteReader,
    SmoothReader,
    coloured_set,
    evaluation_settings,
    oracle,
    save,
    stripes,
    textured_set,
    write_sample_folder,
)
from omegaconf import OmegaConf
from PIL import Image

from sdm.core.configs import compose
from sdm.core.errors import ConfigError, DataError
from sdm.data.classes import colorize
from sdm.metrics.evaluation import evaluate_set, find_segmenter, load_networks, open_set
from sdm.metrics.image_sets import from_folders, from_sample_folder, mask_of
from sdm.metrics.report import JSON_FILE
from sdm.metrics.scoring import Calibration, Networks, score_set
from sdm.segmenter.cache import INFO_FILE, WEIGHTS_FILE
from sdm.segmenter.networks import SmallSegmenter
from sdm.segmenter.scores import confusion_matrix, segmentation_scores
from sdm.training.validation import SegmenterScorer, colour_scorer, other_labels, validation_scorer

REPO = Path(__file__).resolve().parents[2]


settings = evaluation_settings


# ----------------------------------------------------------------------------- metrics


def test_perfect_samples_score_like_the_real_photos(tmp_path):
    root, _ = coloured_set(tmp_path / "s", noise=0)
    m = score_set(from_sample_folder(root), oracle(), progress=False)["metrics"]
    assert m["miou"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["real_miou"] == 1.0
    assert m["consistency_ratio"] == 1.0
    assert m["other_mask_miou"] < 0.2  # a different mask's layout is not found in the image
    assert m["ms_ssim_diversity"] < 1e-4  # three identical samples per mask
    assert m["fid"] < 1e-2 and m["segmenter_frechet_distance"] < 1e-2


def test_real_photos_of_another_size_are_read_at_the_masks_size(tmp_path):
    """A real photo stored at twice the size is resized to the set's size before the segmenter reads it."""
    labels = [stripes(16, seed) for seed in range(4)]
    photos = [colorize(label) for label in labels]
    large = [np.repeat(np.repeat(photo, 2, axis=0), 2, axis=1) for photo in photos]
    root = write_sample_folder(tmp_path / "s", labels, [[photo] for photo in photos], real=large)
    m = score_set(from_sample_folder(root), oracle(), progress=False)["metrics"]
    assert m["real_miou"] > 0.95 and m["miou"] == 1.0


def test_noise_lowers_consistency_and_raises_diversity_and_distances(tmp_path):
    clean = score_set(from_sample_folder(coloured_set(tmp_path / "a", noise=0)[0]), oracle(), progress=False)
    noisy = score_set(from_sample_folder(coloured_set(tmp_path / "b", noise=40)[0]), oracle(), progress=False)
    c, n = clean["metrics"], noisy["metrics"]
    assert n["miou"] < 0.6 * c["miou"]
    assert n["consistency_ratio"] == pytest.approx(n["miou"] / n["real_miou"])
    assert n["ms_ssim_diversity"] > 0.2
    assert n["fid"] > c["fid"] + 1e-3 and n["segmenter_frechet_distance"] > c["segmenter_frechet_distance"] + 1e-3


def test_per_mask_and_other_mask_scores_match_hand_made_confusions(tmp_path):
    root, labels = coloured_set(tmp_path / "s", n=4, per_mask=2, noise=25)
    image_set = from_sample_folder(root)
    result = score_set(image_set, oracle(), images_per_batch=3, progress=False)  # batches split masks 2 + 1 + 1
    reader = PaletteReader()
    own_total = other_total = 0
    for i, entry in enumerate(image_set.entries):
        images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in entry.samples])
        pred = reader(images.float() / 127.5 - 1).argmax(1)
        own = confusion_matrix(pred, torch.from_numpy(labels[i]).long().expand_as(pred), 35)
        other = confusion_matrix(pred, torch.from_numpy(labels[(i + 1) % 4]).long().expand_as(pred), 35)
        own_total, other_total = own_total + own, other_total + other
        assert result["per_mask"][i]["miou"] == pytest.approx(segmentation_scores(own)["miou"])
    assert result["metrics"]["miou"] == pytest.approx(segmentation_scores(own_total)["miou"])
    assert result["metrics"]["other_mask_miou"] == pytest.approx(segmentation_scores(other_total)["miou"])
    pixels = result["per_class_iou"]["mask_pixels"]
    assert sum(pixels.values()) == sum(int((lb > 0).sum()) * 2 for lb in labels)  # class 0 left out


def test_without_real_photos_the_ceiling_comes_from_the_segmenters_held_out_split(tmp_path):
    labels = [stripes(32, s) for s in range(3)]
    root = write_sample_folder(tmp_path / "s", labels, [[colorize(lb)] * 2 for lb in labels])
    nets = Networks(segmenter=PaletteReader(), segmenter_info={"real_val_miou": 0.8}, inception=MeanColour())
    result = score_set(from_sample_folder(root), nets, progress=False)
    m = result["metrics"]
    assert m["real_miou"] == 0.8 and m["consistency_ratio"] == pytest.approx(1 / 0.8)
    assert "held-out" in result["sources"]["real_miou"]
    assert "fid" not in m and any(n.startswith("FID/KID skipped") for n in result["notes"])
    assert result["instrument"]["reasons"] == ["no blur control: neither real photos nor a stored calibration"]
    assert any("holds no calibration" in note for note in result["notes"])  # a segmenter.json from before
    nets.segmenter_info.update(real_val_miou=0.95, calibration={"blur_miou": 0.9})  # stored at its training
    stored = score_set(from_sample_folder(root), nets, progress=False)
    assert stored["metrics"]["blur_control_ratio"] == pytest.approx(0.9 / 0.95)
    nets.segmenter_info["calibration"] = {"blur_miou": 0.45, "blur_ratio": 0.5, "blur_factor": 2}  # one pass's ratio
    assert score_set(from_sample_folder(root), nets, progress=False)["metrics"]["blur_control_ratio"] == 0.5
    other = score_set(from_sample_folder(root), nets, progress=False, calibration=Calibration(blur_factor=4))
    assert "blur_control_miou" not in other["metrics"] and any("blurred by 2x" in n for n in other["notes"])
    nets.segmenter_info["calibration"] = {"blur_miou": 0.9}
    assert "held-out split, blurred" in stored["sources"]["blur_control_miou"]
    assert not stored["instrument"]["reliable"] and "blurred photos at 95%" in stored["instrument"]["reasons"][0]
    nets.segmenter_info.update(real_val_miou=0.1, calibration={"blur_miou": 0.01})
    low = score_set(from_sample_folder(root), nets, progress=False)["instrument"]
    assert not low["reliable"] and low["reasons"] == ["its ceiling (mIoU 0.10 on real photos) is below 0.80"]


# ----------------------------------------------------------------------------- calibration


def test_an_instrument_that_sees_detail_is_trusted_and_places_generated_images_on_its_scale(tmp_path):
    real_as_generated = textured_set(tmp_path / "real")
    report = evaluate_set(from_sample_folder(real_as_generated), real_as_generated, settings(tensorboard=False),
                          nets=Networks(segmenter=DetailReader()))
    m = report["metrics"]
    assert m["real_miou"] > 0.9 and m["consistency_ratio"] == pytest.approx(1.0)
    assert m["blur_control_ratio"] < 0.2 and m["other_mask_miou"] < 0.2 * m["real_miou"]
    assert report["instrument"]["reliable"] and report["instrument"]["reasons"] == []
    text = (real_as_generated / "evaluation_report.txt").read_text().splitlines()
    assert text[0] == (f"the instrument can judge detail (ceiling {m['real_miou']:.2f}, blurred photos at "
                       f"{m['blur_control_ratio']:.0%} of it): consistency ratio reliable")
    assert not any("UNRELIABLE" in line for line in text)
    assert (real_as_generated / "evaluation" / "calibration.png").is_file()
    blurred = textured_set(tmp_path / "blurred", blur_samples=True)  # a generator that only gets the layout
    b = evaluate_set(from_sample_folder(blurred), blurred, settings(tensorboard=False),
                     nets=Networks(segmenter=DetailReader()))["metrics"]
    assert b["consistency_ratio"] == pytest.approx(b["blur_control_ratio"], abs=0.01) and b["consistency_ratio"] < 0.2
    scale = next(line for line in (blurred / "evaluation_report.txt").read_text().splitlines() if "scale" in line)
    assert scale.index("real 1") > scale.index("generated") and scale.index("real 1") > scale.index("blur control")


@pytest.mark.parametrize("reader, reason", [(SmoothReader, "it rates blurred photos at"), (ConfusedReader, "its ceiling")])
def test_an_instrument_blind_to_detail_flags_the_ratio_in_every_report(tmp_path, reader, reason):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    root = textured_set(run / "samples" / "s", run_dir=run)
    report = evaluate_set(from_sample_folder(root), root, settings(), nets=Networks(segmenter=reader()))
    saved = json.loads((root / JSON_FILE).read_text())["instrument"]
    assert saved["reliable"] is False and len(saved["reasons"]) == 1 and saved["reasons"][0].startswith(reason)
    text = (root / "evaluation_report.txt").read_text().splitlines()
    assert text[0].startswith("WARNING: UNRELIABLE consistency ratio: the instrument cannot judge detail (" + reason)
    assert next(line for line in text if "consistency ratio (generated" in line).endswith("UNRELIABLE")
    html = (root / "evaluation.html").read_text()
    assert "data-reliable='false'" in html and "(unreliable)</td>" in html
    assert html.index("id='instrument'") < html.index("<h1>")  # the page leads with it
    events = EventAccumulator(report["files"]["tensorboard"])
    events.Reload()
    assert events.Scalars("eval/instrument_reliable")[0].value == 0.0


def test_calibration_settings_are_checked(tmp_path):
    root = textured_set(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"evaluation.calibration.blur_factor=1 is invalid"):
        evaluate_set(from_sample_folder(root), root, settings(calibration={"blur_factor": 1}), nets=oracle())
    with pytest.raises(ConfigError, match=r"evaluation.calibration.blur is not a setting"):
        evaluate_set(from_sample_folder(root), root, settings(calibration={"blur": 2}), nets=oracle())
    for bad in ({"min_ceiling": None}, {"max_blur_ratio": 1.5}, {"min_ceiling": "high"}):
        with pytest.raises(ConfigError, match=rf"evaluation.calibration.{next(iter(bad))}=.* expected a number in \[0, 1\]"):
            evaluate_set(from_sample_folder(root), root, settings(calibration=bad), nets=oracle())
    assert not (root / JSON_FILE).exists()
    strict = settings(calibration={"max_blur_ratio": 0.05})
    report = evaluate_set(from_sample_folder(root), root, strict, nets=Networks(segmenter=DetailReader()))
    assert report["instrument"]["max_blur_ratio"] == 0.05 and not report["instrument"]["reliable"]


# ----------------------------------------------------------------------------- sets


def test_plain_folders_pair_images_and_labels_by_name(tmp_path):
    a, b = stripes(16, 1), stripes(16, 2)
    for name, label in (("a", a), ("b_x", b)):
        save(label, tmp_path / "labels" / f"{name}.png")
        save(colorize(label), tmp_path / "real" / f"{name}.png")
    for name in ("a_0", "a_1", "b_x"):
        save(colorize(a if name.startswith("a") else b), tmp_path / "images" / f"{name}.png")
    image_set = from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "real")
    assert [(e.name, [p.name for p in e.samples]) for e in image_set.entries] == [
        ("a", ["a_0.png", "a_1.png"]), ("b_x", ["b_x.png"])]
    assert all(e.real is not None for e in image_set.entries) and image_set.size == (16, 16)
    assert np.array_equal(image_set.entries[0].label, a)
    assert mask_of("b_x_3", {"b_x"}) == "b_x" and mask_of("b_3", {"b_x"}) is None and mask_of("a_b", {"a"}) is None


def bad_folders(root: Path, kind: str) -> tuple[Path, Path]:
    label = stripes(16, 0)
    save(label, root / "labels" / "m.png")
    save(colorize(label), root / "images" / "m_0.png")
    if kind == "orphan":
        save(colorize(label), root / "images" / "stray.png")
    elif kind == "lonely":
        save(label, root / "labels" / "alone.png")
    elif kind == "bad id":
        save(np.full((16, 16), 40, np.uint8), root / "labels" / "m.png")
    elif kind == "not an image":
        (root / "labels" / "m.png").write_bytes(b"not a png")
    elif kind == "sizes":
        save(stripes(24, 1), root / "labels" / "n.png")
        save(colorize(stripes(24, 1)), root / "images" / "n.png")
    return root / "images", root / "labels"


@pytest.mark.parametrize("kind, match", [
    ("orphan", r"1 file\(s\) match no label .*stray\.png"),
    ("lonely", r"1 label\(s\) have no image .*alone"),
    ("bad id", r"label file '.*m\.png' cannot be used: values \[40\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.34"),
    ("not an image", r"label file '.*m\.png' cannot be used"),
    ("sizes", r"differ in size"),
])
def test_bad_folders_name_the_file_and_write_nothing(tmp_path, kind, match):
    images, labels = bad_folders(tmp_path, kind)
    cfg = OmegaConf.create({"samples": None, "images": str(images), "labels": str(labels), "real": None,
                            "out_dir": None, "num_classes": 35})
    with pytest.raises(DataError, match=match):
        open_set(cfg)
    assert not list(tmp_path.rglob(JSON_FILE))


def test_sample_folders_must_be_finished_and_complete(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=2, per_mask=2)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="not finished .* run the same sample.py command again"):
        from_sample_folder(root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "images" / "000001_1.png").unlink()
    with pytest.raises(DataError, match=r"sample of mask '000001' '.*000001_1\.png' is missing"):
        from_sample_folder(root)
    with pytest.raises(DataError, match="no manifest.json there"):
        from_sample_folder(tmp_path)
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        open_set(OmegaConf.create({"samples": None, "images": None, "labels": None, "num_classes": 35}))


# ----------------------------------------------------------------------------- networks, offline


def test_missing_metric_weights_skip_fid_and_lpips_with_one_line_each(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=3, per_mask=2, noise=10)
    image_set = from_sample_folder(root)
    ecfg = settings(weights_dir=str(tmp_path / "empty"), segmenter="none")
    nets, used = load_networks(ecfg, image_set)
    assert nets.inception is None and nets.lpips is None and nets.segmenter is None and used == {}
    skipped = [n for n in nets.notes if "python -m sdm.cli.weights download" in n]
    assert len(skipped) == 2 and all("\n" not in n for n in skipped)
    assert {n.split(" ", 1)[0] for n in skipped} == {"FID/KID", "LPIPS"}
    report = evaluate_set(image_set, root, ecfg)
    assert set(report["metrics"]) == {"ms_ssim_diversity"}  # what needs no weights still ran
    assert json.loads((root / JSON_FILE).read_text())["notes"] == report["notes"]
    fake = tmp_path / "weights" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"")
    assert load_networks(settings(weights_dir=str(tmp_path / "weights"), segmenter="none"), image_set)[0].inception == 2048


def small_segmenter_folder(folder: Path, real_val_miou: float = 0.5, size=(32, 32)) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in SmallSegmenter(35, 16).state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / INFO_FILE).write_text(json.dumps({"arch": "small", "width": 16, "num_classes": 35, "size": list(size),
                                                "real_val_miou": real_val_miou}))
    return folder


def test_auto_finds_the_segmenter_cached_for_the_runs_data(tmp_path, data_cfg, monkeypatch):
    from sdm.metrics.evaluation import cached_segmenter_folder

    monkeypatch.setenv("SDM_SEGMENTER_DIR", str(tmp_path / "segmenters"))
    data = OmegaConf.to_container(data_cfg("scenes", size=[32, 32], **{"scenes.num": 6}), resolve=True)
    root, _ = coloured_set(tmp_path / "s", n=2, per_mask=2, train_data=data)
    image_set = from_sample_folder(root)
    notes: list[str] = []
    assert find_segmenter("auto", image_set, train=False, notes=notes) is None
    assert "no segmenter cached" in notes[0]
    folder = small_segmenter_folder(cached_segmenter_folder(data))
    assert find_segmenter("auto", image_set, train=False, notes=[]) == folder
    nets, used = load_networks(settings(segmenter="auto", fid=False, lpips=False), image_set)
    assert isinstance(nets.segmenter, SmallSegmenter) and used["folder"] == str(folder)
    plain = from_folders(root / "images", root / "labels")
    notes = []
    assert find_segmenter("auto", plain, train=True, notes=notes) is None and "evaluation.segmenter=<folder>" in notes[0]
    nets, _ = load_networks(settings(segmenter=str(small_segmenter_folder(tmp_path / "seg", size=(64, 64))),
                                     fid=False, lpips=False), image_set)
    assert any("trained at 64x64 and the set is 32x32" in n for n in nets.notes)


# ----------------------------------------------------------------------------- report


def test_report_files_history_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    first, _ = coloured_set(run / "samples" / "ddim-s1", noise=10, run_dir=run)
    evaluate_set(from_sample_folder(first), first, settings(), nets=oracle())
    second, _ = coloured_set(run / "samples" / "ddim-s1.5", noise=30, run_dir=run)
    report = evaluate_set(from_sample_folder(second), second, settings(), nets=oracle())
    saved = json.loads((second / JSON_FILE).read_text())
    assert saved["metrics"] == pytest.approx(report["metrics"])
    assert {"torch", "torchmetrics", "lpips"} <= set(saved["versions"]) and saved["settings"]["sampler"]["name"] == "ddim"
    text = (second / "evaluation_report.txt").read_text()
    assert f"{report['metrics']['miou']:.4g}" in text and "ceiling" in text
    html = (second / "evaluation.html").read_text()
    assert "ddim-s1</td>" in html and "ddim-s1.5</td>" in html  # the history of the run
    for picture in report["files"]["pictures"].values():
        assert (second / picture).is_file()
    events = EventAccumulator(report["files"]["tensorboard"])
    events.Reload()
    assert events.Scalars("eval/miou")[0].value == pytest.approx(report["metrics"]["miou"], rel=1e-5)
    assert Path(report["files"]["tensorboard"]).parent == run / "tb"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_page_opens_in_headless_chromium_with_its_table_and_every_image(tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("SDM_REQUIRE_CHROMIUM"):
            pytest.fail("SDM_REQUIRE_CHROMIUM is set but no chromium is installed (.ci/run installs it)")
        pytest.skip("no chromium here (apt-get install chromium); CI installs it")
    root, _ = coloured_set(tmp_path / "s", noise=20)
    evaluate_set(from_sample_folder(root), root, settings(), nets=oracle())
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", (root / "evaluation.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert 'data-images-loaded="3/3"' in dom, dom[:500]  # best, worst and calibration grids decoded
    assert "<table id=\"metrics\">" in dom and "data-metric=\"miou\"" in dom and "<svg id=\"per-class\"" in dom
    assert "<svg id=\"calibration\"" in dom and 'id="instrument"' in dom
    (root / "evaluation" / "worst.png").unlink()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", (root / "evaluation.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-loaded="2/3"' in dom  # the check sees a missing picture


# ----------------------------------------------------------------------------- validation


def test_validation_scorer_reads_own_and_other_masks():
    labels = torch.from_numpy(np.stack([stripes(16, s) for s in range(3)]))
    images = torch.from_numpy(np.stack([colorize(lb.numpy()) for lb in labels])).permute(0, 3, 1, 2)
    samples = (images.float() / 127.5 - 1).repeat_interleave(2, 0)
    scores = SegmenterScorer(PaletteReader(), 35, "oracle")(samples, labels, 2)
    assert scores["val/segmenter_miou"] == 1.0 and scores["val/segmenter_miou_other_masks"] < 0.3
    others = other_labels(labels, 2)
    assert all(not torch.equal(others[k], labels[k // 2]) for k in range(6))
    assert torch.equal(others[0], labels[1]) and torch.equal(others[5], labels[0])


def test_validation_scorer_choice(tmp_path):
    cfg = {"validation": {"segmenter": "none"}, "data": {"name": "scenes", "num_classes": 35}}
    scorer = validation_scorer(cfg)
    assert scorer(torch.zeros(4, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.uint8), 2).keys() == {
        "val/scene_colour_agreement", "val/scene_colour_agreement_other_masks"}
    sidewalk = {"validation": {"segmenter": "none"}, "data": {"name": "sidewalk", "num_classes": 35}}
    assert validation_scorer(sidewalk)(torch.zeros(2, 3, 8, 8), torch.zeros(1, 8, 8), 2) == {}
    with pytest.raises(ConfigError, match="validation.segmenter=.*no trained segmenter there"):
        validation_scorer({**cfg, "validation": {"segmenter": str(tmp_path)}})
    folder = small_segmenter_folder(tmp_path / "seg")
    given = validation_scorer({**cfg, "validation": {"segmenter": str(folder)}})
    out = given(torch.zeros(4, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.uint8), 2)
    assert set(out) == {"val/segmenter_miou", "val/segmenter_miou_other_masks"}
    assert colour_scorer(torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8), 1) == {}


@pytest.mark.slow  # starts Python interpreters: runs in CI, not in the quick loop
def test_cli_scores_a_folder_offline_and_refuses_bad_input(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=3, per_mask=2, noise=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(tmp_path / "no-weights")}
    done = subprocess.run([sys.executable, "-m", "sdm.cli.evaluate", f"samples={root}", "evaluation.progress=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FID/KID (Inception" in done.stdout and "LPIPS (AlexNet" in done.stdout and "skipped" in done.stdout
    assert (root / JSON_FILE).is_file() and (root / "evaluation.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "sdm.cli.evaluate", f"images={tmp_path / 'nowhere'}",
                          f"labels={root / 'labels'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_an_unreadable_sample_is_named_and_no_report_is_written(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=3, per_mask=2)
    (root / "images" / "000002_1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"image file '.*000002_1\.png' cannot be read"):
        evaluate_set(from_sample_folder(root), root, settings(), nets=oracle())
    assert not (root / JSON_FILE).exists() and not (root / "evaluation.html").exists()


def test_lpips_diversity_per_mask_and_in_the_mean(tmp_path):
    import lpips

    root, _ = coloured_set(tmp_path / "s", n=3, per_mask=3, noise=30)
    network = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    result = score_set(from_sample_folder(root), Networks(lpips=network), progress=False)
    rows = result["per_mask"]
    assert all(row["diversity_lpips"] > 0 for row in rows)
    assert result["metrics"]["lpips_diversity"] == pytest.approx(np.mean([row["diversity_lpips"] for row in rows]))
    same, _ = coloured_set(tmp_path / "t", n=2, per_mask=2, noise=0)
    assert score_set(from_sample_folder(same), Networks(lpips=network), progress=False)["metrics"][
        "lpips_diversity"] == pytest.approx(0, abs=1e-6)


def test_the_record_of_a_set_names_every_part(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=2, per_mask=2, noise=0)
    result = score_set(from_sample_folder(root), oracle(), progress=False)
    assert result["counts"] == {"masks": 2, "images": 4, "real": 2}
    assert [set(row) for row in result["per_mask"]] == [{"mask", "images", "miou", "real_miou", "diversity_ms_ssim"}] * 2
    assert [row["mask"] for row in result["per_mask"]] == ["000000", "000001"] and result["per_mask"][0]["images"] == 2
    assert result["metrics"]["real_pixel_accuracy"] == 1.0 and "other_mask_miou" in result["metrics"]  # two masks
    assert result["sources"] == {"real_miou": "the segmenter on the real photos of these masks",
                                 "blur_control_miou": "the same photos blurred (down and up), the same segmenter"}
    real = result["per_class_iou"]["real"]
    assert set(real) == {str(c) for c in range(1, 35)} and all(v in (None, 1.0) for v in real.values())
    assert result["notes"] == []


def test_single_samples_and_a_zero_ceiling(tmp_path):
    labels = [stripes(16, s) for s in range(2)]
    root = write_sample_folder(tmp_path / "s", labels, [[colorize(lb)] for lb in labels])
    nets = Networks(segmenter=PaletteReader(), segmenter_info={"real_val_miou": 0.0})
    result = score_set(from_sample_folder(root), nets, progress=False)
    assert "ms_ssim_diversity" not in result["metrics"] and "diversity_ms_ssim" not in result["per_mask"][0]
    assert any(n.startswith("diversity skipped: every mask has a single image") for n in result["notes"])
    assert np.isnan(result["metrics"]["consistency_ratio"])
    alone = write_sample_folder(tmp_path / "one", labels[:1], [[colorize(labels[0])] * 2])
    assert "other_mask_miou" not in score_set(from_sample_folder(alone), oracle(), progress=False)["metrics"]
    bare = score_set(from_sample_folder(root), Networks(), progress=False)
    assert bare["metrics"] == {} and any(n.startswith("semantic consistency skipped: no segmenter") for n in bare["notes"])
    assert bare["instrument"] is None  # no segmenter: nothing to judge
    nets.segmenter_info["calibration"] = {"blur_miou": 0.3}
    zero = score_set(from_sample_folder(root), nets, progress=False)["metrics"]
    assert zero["blur_control_miou"] == 0.3 and np.isnan(zero["blur_control_ratio"])


def test_the_blur_control_averages_blocks_and_interpolates_between_their_centres():
    from sdm.segmenter.controls import blur_control

    ramp = torch.tensor([0.0, 0.0, 4.0, 4.0]).expand(1, 1, 2, 4)
    # 2x2 area means [0, 4]; bilinear back with pixel centres (not corners) aligned: [0, 1, 3, 4]
    assert blur_control(ramp).tolist() == [[[[0.0, 1.0, 3.0, 4.0]] * 2]]
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    assert torch.equal(blur_control(board.expand(1, 3, 8, 8)), torch.zeros(1, 3, 8, 8))  # detail gone
    wide = torch.tensor([0.0, 0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 8.0]).expand(1, 1, 4, 8)
    assert blur_control(wide, 4)[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 3.0, 5.0, 7.0, 8.0, 8.0]
    with pytest.raises(ValueError, match="blur factor 1 is invalid"):
        blur_control(ramp, 1)


def test_the_verdict_names_each_bound_and_holds_at_the_bounds():
    from sdm.metrics.scoring import Calibration, instrument_verdict

    bounds = Calibration(blur_factor=3, min_ceiling=0.8, max_blur_ratio=0.5)
    at_bounds = instrument_verdict({"real_miou": 0.8, "blur_control_miou": 0.4, "blur_control_ratio": 0.5}, bounds)
    assert at_bounds["reliable"] and at_bounds["reasons"] == []
    assert {k: at_bounds[k] for k in ("min_ceiling", "max_blur_ratio", "blur_factor")} == \
        {"min_ceiling": 0.8, "max_blur_ratio": 0.5, "blur_factor": 3}
    assert at_bounds["summary"] == ("the instrument can judge detail (ceiling 0.80, blurred photos at 50% of it): "
                                    "consistency ratio reliable")
    past = instrument_verdict({"real_miou": 0.79, "blur_control_miou": 0.4, "blur_control_ratio": 0.51}, bounds)
    assert past["reasons"] == ["its ceiling (mIoU 0.79 on real photos) is below 0.80",
                               "it rates blurred photos at 51% of real (the bound is 50%)"]
    assert past["summary"] == ("UNRELIABLE consistency ratio: the instrument cannot judge detail (" + "; ".join(past["reasons"])
                               + "); train a stronger segmenter (python -m sdm.cli.segmenter)")
    unknown = instrument_verdict({}, bounds)
    assert unknown["reasons"] == ["no ceiling: neither real photos nor the segmenter's held-out score",
                                  "no blur control: neither real photos nor a stored calibration"]
    zero = instrument_verdict({"real_miou": float("nan"), "blur_control_miou": 0.2, "blur_control_ratio": float("nan")},
                              bounds)
    assert zero["reasons"] == ["its ceiling (mIoU nan on real photos) is below 0.80",
                               "no blur control ratio: the ceiling is zero"]


def test_the_blur_factor_setting_reaches_the_control(tmp_path):
    root = textured_set(tmp_path / "s")
    two = score_set(from_sample_folder(root), Networks(segmenter=SmoothReader()), progress=False)["metrics"]
    four = score_set(from_sample_folder(root), Networks(segmenter=SmoothReader()), progress=False,
                     calibration=Calibration(blur_factor=4))["metrics"]
    assert two["blur_control_miou"] > four["blur_control_miou"] + 0.05  # a coarser blur loses more


def test_images_of_another_size_are_resized_to_the_labels(tmp_path):
    label = stripes(16, 3)
    save(label, tmp_path / "labels" / "m.png")
    big = np.asarray(Image.fromarray(colorize(label)).resize((48, 48), Image.Resampling.NEAREST))
    save(big, tmp_path / "images" / "m_0.png")
    save(big, tmp_path / "images" / "m_1.png")
    image_set = from_folders(tmp_path / "images", tmp_path / "labels")
    result = score_set(image_set, Networks(segmenter=PaletteReader()), progress=False)
    assert result["metrics"]["pixel_accuracy"] > 0.9  # Lanczos at band edges aside, the layout is kept
    with pytest.raises(DataError, match=r"images=.*nowhere is not a folder"):
        from_folders(tmp_path / "nowhere", tmp_path / "labels")
    with pytest.raises(DataError, match=r"labels=.*nowhere is not a folder"):
        from_folders(tmp_path / "images", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"real=.*nowhere is not a folder"):
        from_folders(tmp_path / "images", tmp_path / "labels", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"values \[35\] in \d+ pixels are not classes of the '\w+' table \(ids 0\.\.34"):
        save(np.full((16, 16), 35, np.uint8), tmp_path / "labels" / "m.png")
        from_folders(tmp_path / "images", tmp_path / "labels")
    assert from_folders(tmp_path / "images", tmp_path / "labels", classes=36).entries[0].label.max() == 35


def test_batches_hold_whole_masks_of_about_the_asked_size():
    from sdm.metrics.image_sets import MaskEntry
    from sdm.metrics.scoring import batches_of_masks

    entries = [MaskEntry(str(i), np.zeros((2, 2), np.uint8), tuple(Path(f"{i}_{k}") for k in range(n)))
               for i, n in enumerate([2, 2, 3, 1, 5])]
    assert list(batches_of_masks(entries, 4)) == [[0, 1], [2, 3], [4]]
    assert list(batches_of_masks(entries, 5)) == [[0, 1], [2, 3], [4]]
    assert list(batches_of_masks(entries, 1)) == [[0], [1], [2], [3], [4]]


def test_auto_validation_scorer_finds_the_cached_segmenter(tmp_path, data_cfg, monkeypatch):
    from sdm.metrics.evaluation import cached_segmenter_folder

    monkeypatch.setenv("SDM_SEGMENTER_DIR", str(tmp_path / "segmenters"))
    from sdm.training.validation import find_scorer

    data = OmegaConf.to_container(data_cfg("scenes", size=[32, 32], **{"scenes.num": 6}), resolve=True)
    cfg = {"validation": {"segmenter": "auto"}, "data": data}
    assert find_scorer(cfg) is colour_scorer  # scenes, nothing cached yet
    assert find_scorer({**cfg, "data": {**data, "name": "sidewalk", "streaming": True}}) is None
    small_segmenter_folder(cached_segmenter_folder(data))
    found = find_scorer(cfg)
    assert isinstance(found, SegmenterScorer) and found.folder == str(cached_segmenter_folder(data))
    assert find_scorer({**cfg, "data": {**data, "streaming": True}}) is colour_scorer  # a stream has no cache key


def test_a_bad_device_is_refused_before_anything_is_read(tmp_path):
    root, _ = coloured_set(tmp_path / "s", n=2, per_mask=2)
    with pytest.raises(ConfigError, match=r"device='tpu' is invalid: expected auto, cpu, cuda or cuda:N"):
        evaluate_set(from_sample_folder(root), root, settings(device="tpu"), nets=oracle())
    assert not (root / JSON_FILE).exists()


def test_the_class_table_is_the_model_s_unless_given(tmp_path):
    """A converted official ADE20K model's samples hold ids up to 150: read with sidewalk's 35 classes
    they would be refused. A sample folder is read with its run's table; num_classes= overrides it."""
    from sdm.metrics.evaluation import classes_of

    def cfg(**kw):
        return OmegaConf.create({"samples": None, "images": None, "labels": None, "num_classes": None, **kw})

    assert classes_of(cfg(samples=str(tmp_path))) is None and classes_of(cfg(num_classes=19)) == 19
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((4, 4), 150, np.uint8)).save(tmp_path / "labels" / "m.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "m_0.png")
    ade = compose("prepare", ["data=ade20k"]).data
    manifest = {"complete": True, "train_data": OmegaConf.to_container(ade, resolve=True),
                "items": [{"mask": "m", "label": "labels/m.png", "images": ["images/m_0.png"]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    image_set = from_sample_folder(tmp_path)
    assert image_set.table.name == "ade20k" and image_set.entries[0].label.max() == 150  # ids, not file values
    with pytest.raises(DataError, match=r"values \[150\] in 16 pixels are not classes of the 'generic' table"):
        from_sample_folder(tmp_path, 19)
    manifest["train_data"] = {"name": "ade20k", "num_classes": 151}  # saved before class tables: generic 151
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert from_sample_folder(tmp_path).table.num_classes == 151
