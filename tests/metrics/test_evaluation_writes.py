"""Where an evaluation writes, and what it says about what it read: its places are checked
before any scoring, its files land together or not at all, and an image read at another size
is said in the report."""

from __future__ import annotations

import re

import pytest
from helpers.evaluation import evaluation_settings, oracle, textured_set
from PIL import Image

from sdm.core.atomic import WriteError, describe_write_failure
from sdm.metrics import evaluation
from sdm.metrics.evaluation import evaluate_set
from sdm.metrics.image_sets import from_sample_folder
from sdm.metrics.report import JSON_FILE, PICTURES_DIR, TEXT_FILE

settings = evaluation_settings


def test_a_write_that_fails_midway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    root = textured_set(tmp_path / "set")
    evaluate_set(from_sample_folder(root), root, settings(tensorboard=False), nets=oracle())
    before = (root / JSON_FILE).read_bytes()
    for picture in (root / PICTURES_DIR).iterdir():
        picture.unlink()  # so that a picture of the failing run would show
    written = evaluation.write_text

    def disk_full_at_the_text_report(path, text):  # after the pictures and the HTML page
        if path.name == TEXT_FILE:
            raise WriteError(describe_write_failure(path, OSError(28, "No space left on device")))
        written(path, text)

    monkeypatch.setattr(evaluation, "write_text", disk_full_at_the_text_report)
    with pytest.raises(WriteError, match=rf"the evaluation could not be written to {re.escape(str(root))}: the disk "
                                         "holding .* is full"):
        evaluate_set(from_sample_folder(root), root, settings(tensorboard=False), nets=oracle())
    assert (root / JSON_FILE).read_bytes() == before  # the previous report, not a new half of one
    assert list((root / PICTURES_DIR).iterdir()) == []
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_unwritable_tensorboard_folder_is_named_before_scoring(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "tb").parent.mkdir()
    (run / "tb").write_text("a file where the run's TensorBoard folder should be")
    root = textured_set(tmp_path / "set", run_dir=run)
    scored = []
    monkeypatch.setattr(evaluation, "score_set", lambda *a, **k: scored.append(1))
    with pytest.raises(WriteError, match=rf"evaluation\.tensorboard \(its folder\)={re.escape(str(run / 'tb'))}/eval-set "
                                         "cannot be made: .* is a file"):
        evaluate_set(from_sample_folder(root), root, settings(), nets=oracle())
    assert scored == [] and not (root / JSON_FILE).exists()


def test_an_image_of_another_size_is_resized_and_said(tmp_path):
    root = textured_set(tmp_path / "set")  # 32 x 32
    image = root / "images" / "000001_0.png"
    with Image.open(image) as opened:
        bigger = opened.resize((64, 48))
    bigger.save(image)
    report = evaluate_set(from_sample_folder(root), root, settings(tensorboard=False), nets=oracle())
    assert "1 generated image(s) were 48x64, not the masks' 32x32: resized (Lanczos) before scoring" in report["notes"]
    plain = evaluate_set(from_sample_folder(textured_set(tmp_path / "plain")), tmp_path / "plain",
                         settings(tensorboard=False), nets=oracle())
    assert not [note for note in plain["notes"] if "resized" in note]
