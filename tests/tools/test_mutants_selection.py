"""The mutation tool leaves tests out by words of their function names, never by their folder: `-k cli`
had matched every test under tests/cli/ (pytest's keywords include the folder), so the pipeline's
mutants ran with no test at all."""

from __future__ import annotations

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
import mutants  # noqa: E402
from mutants import left_out  # noqa: E402


def test_words_match_whole_parts_of_the_function_name_only():
    assert left_out("tests/data/test_data.py::test_prepare_cli", ["cli"])
    assert left_out("tests/x.py::test_cli_errors_are_clear[bad]", ["cli"])
    assert left_out("tests/x.py::test_a_wheel_samples_with_python_dash_m", ["python_dash_m"])
    assert not left_out("tests/cli/test_pipeline.py::test_config_errors_are_clear", ["cli"])
    assert not left_out("tests/diffusion/test_diffusion.py::test_clipping_keeps_images_in_range", ["cli"])
    assert not left_out("tests/x.py::test_a_case[cli]", ["cli"])  # a parameter is not the name


def test_a_selection_leaves_out_by_node_id_the_named_tests_and_keeps_the_rest_of_the_folder():
    selection = mutants.test_selection(["tests/cli/test_pipeline.py"], "cli clear")
    left = [selection[i + 1] for i, arg in enumerate(selection) if arg == "--deselect"]
    assert selection[0] == "tests/cli/test_pipeline.py" and "-k" not in selection
    assert left == ["tests/cli/test_pipeline.py::test_config_errors_are_clear"]  # not every test under tests/cli/
