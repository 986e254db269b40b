"""devices=N with real spawned processes. Kept in a file of its own: mutation runs leave it out,
since the children of a test killed by mutmut's time-out outlive it."""

from __future__ import annotations

from helpers.generation import files, sample_cfg, stable

from sdm.generation import generate


def test_two_local_processes_make_the_files_of_one_run(single, run_dir, tmp_path):  # noqa: F811
    """devices=2 on the CPU: two spawned processes stand in for two GPUs."""
    masks, reference, manifest = single
    out = tmp_path / "out"
    merged = generate(sample_cfg(f"weights={run_dir}", f"masks={masks}", f"out_dir={out}", "devices=2"))
    assert files(out) == files(reference)
    assert stable(merged) == stable(manifest) and merged["shards"] == 2
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-0000-of-0002.json", "shard-0001-of-0002.json"]
