"""README's experiment thumbnails: the referenced PNGs exist and are small; docs/make_thumbnails.py draws them."""
from __future__ import annotations

import importlib.util
import re
import struct

import pytest

from tests.conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_REF = re.compile(r"docs/img/([\w-]+\.png)")


def _script():
    spec = importlib.util.spec_from_file_location("make_thumbnails", REPO / "docs" / "make_thumbnails.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG spec puts first, right after the signature."""
    assert data[:8] == PNG_MAGIC, "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "first chunk is not IHDR"
    return struct.unpack(">II", data[16:24])


def _experiments_table() -> list[str]:
    """The rows of README's table of experiments (the one under '## Experiments' with a docs page column)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Experiments\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `expt_")]


def test_every_readme_thumbnail_exists_is_a_png_and_under_the_cap():
    script = _script()
    refs = IMG_REF.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert refs, "README references no docs/img/*.png"
    for name in sorted(set(refs)):
        path = REPO / "docs" / "img" / name
        assert path.is_file(), f"README references {path}, which does not exist"
        data = path.read_bytes()
        assert len(data) <= script.MAX_BYTES, f"{name}: {len(data)} bytes > {script.MAX_BYTES}"
        width, height = _png_size(data)
        # save_thumbnail rounds the dpi to an integer: the width lands within a few percent of WIDTH_PX.
        assert abs(width - script.WIDTH_PX) <= 0.05 * script.WIDTH_PX, (name, width)
        assert 40 <= height <= 2 * width, (name, height)


def test_each_experiment_row_has_its_own_thumbnail_linking_to_its_page():
    script = _script()
    rows = _experiments_table()
    assert len(rows) == len(script.STUDIES) == 9
    seen = []
    for row, name in zip(rows, script.STUDIES):  # STUDIES follows the table's order
        (ref,) = IMG_REF.findall(row)
        assert ref == f"{name}.png", row
        (page,) = set(re.findall(r"\((docs/[\w-]+\.md(?:#[\w-]+)?)\)", row))
        assert f'href="{page}"' in row, f"the thumbnail does not link to the row's page {page}: {row}"
        assert "tiny run" in row, f"caption must say it is a tiny run: {row}"
        seen.append(ref)
    assert len(set(seen)) == len(seen)


def test_committed_thumbnails_are_all_referenced():
    refs = set(IMG_REF.findall((REPO / "README.md").read_text(encoding="utf-8")))
    assert {p.name for p in (REPO / "docs" / "img").glob("*.png")} == refs


def test_study_functions_are_importable_and_callable():
    script = _script()
    assert list(script.STUDIES) == ["llc_dln", "llc_curve", "llc_saddle", "llc_rescaling", "llc_mala",
                                    "sgd_regimes", "chaos", "width_parameterizations", "basis_decomposition"]
    for name, fn in script.STUDIES.items():
        assert callable(fn) and fn.__doc__, name
    with pytest.raises(ValueError, match=r"study names must be among .*got \['nope'\]"):
        script.make(["nope"], REPO / "unused", REPO / "unused")


@pytest.mark.slow
def test_script_draws_one_study_into_a_tmp_dir(tmp_path):
    """The cheapest study end to end: a real run, a real figure, a thumbnail within the caps."""
    script = _script()
    (path,) = script.make(["basis_decomposition"], tmp_path / "img", tmp_path / "work")
    data = path.read_bytes()
    width, _ = _png_size(data)
    assert path == tmp_path / "img" / "basis_decomposition.png"
    assert len(data) <= script.MAX_BYTES and abs(width - script.WIDTH_PX) <= 0.05 * script.WIDTH_PX
