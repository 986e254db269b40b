"""A bad path is reported under the key the user wrote it in: mask_source.path, segmenter.test.path
and data.extra are read by the same Hub-schema loader as data.path, but a message naming
data.path sends the user to a setting they never touched."""

from __future__ import annotations

import re

import pytest

from sdm.core.errors import DataError
from sdm.data.mixing import extra_source_cfg
from sdm.data.sources import load_source, overlay_source


@pytest.mark.parametrize("what", ["mask_source", "segmenter.test"])
def test_an_overlaid_source_names_its_own_key(data_cfg, tmp_path, what):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(DataError, match=rf"^{re.escape(what)}\.path '{re.escape(str(missing))}' is neither a folder"):
        load_source(overlay_source(data_cfg("scenes"), {"path": str(missing)}, what))
    absent = tmp_path / "absent.parquet"
    with pytest.raises(DataError, match=rf"^{re.escape(what)}\.path '{re.escape(str(absent))}' does not exist"):
        load_source(overlay_source(data_cfg("scenes"), {"path": str(absent)}, what))


def test_synthetic_rows_name_data_extra_and_the_data_itself_data_path(data_cfg, tmp_path):
    missing = tmp_path / "export.txt"
    with pytest.raises(DataError, match=rf"^data\.extra '{re.escape(str(missing))}' is neither a folder"):
        load_source(extra_source_cfg(data_cfg("scenes", extra=str(missing))))
    with pytest.raises(DataError, match=rf"^data\.path '{re.escape(str(missing))}' is neither a folder"):
        load_source(data_cfg("sidewalk", path=str(missing)))
