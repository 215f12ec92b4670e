"""The Python examples of "λ̂ for any model, from a notebook" run as written.

The full set of examples is the section of docs/llc.md (docs/llc.md#notebook); README.md and
docs/index.md each carry its first example, which must stay the same code.
"""
import os
import re
from collections import OrderedDict

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import REPO

DOCS_SECTION = "## λ̂ for any model, from a notebook {#notebook}"
SHORT_SECTIONS = [("README.md", "## λ̂ for any model, from a notebook"),
                  ("docs/index.md", "## λ̂ for any model, from a notebook {#estimate-llc}")]


def python_blocks(path: str, heading: str) -> list[str]:
    text = (REPO / path).read_text(encoding="utf-8")
    assert heading in text, f"{path} has no section {heading!r}"
    body = text.split(heading + "\n", 1)[1]
    body = re.split(r"\n#{1,3} ", body, maxsplit=1)[0]  # up to the next heading of level 1-3
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def section_blocks() -> list[str]:
    return python_blocks("docs/llc.md", DOCS_SECTION)


def test_the_section_has_an_example_per_feature():
    code = "\n".join(section_blocks())
    for name in ["estimate_llc(", "plot_llc_trace", "param_mask=", "estimate_llc_per_layer", "DataLoader(train_set)",
                 "calibrate_epsilon", "plot_calibration", "OnlineLLC"]:
        assert name in code, name


@pytest.mark.parametrize("path, heading", SHORT_SECTIONS)
def test_the_short_example_is_one_block_calling_estimate_llc(path, heading):
    blocks = python_blocks(path, heading)
    assert len(blocks) == 1 and "estimate_llc(" in blocks[0], f"{path}: {len(blocks)} python blocks"


def _small_classifier():
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(
        hidden=torch.nn.Linear(4, 8), act=torch.nn.Tanh(), fc=torch.nn.Linear(8, 3)))
    x_train = torch.randn(300, 4)
    y_train = model(x_train).argmax(1)
    return {"model": model, "x_train": x_train, "y_train": y_train, "train_set": TensorDataset(x_train, y_train)}


@pytest.mark.slow
def test_the_section_examples_run_on_a_small_classifier(tmp_path):
    namespace = _small_classifier()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples save figures to the working directory
    try:
        for block in section_blocks():
            exec(compile(block, "docs/llc.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "trace.png").is_file() and (tmp_path / "calibration.png").is_file()
    assert namespace["online"].lambdahat and set(namespace["per_layer"]) == {"hidden", "fc"}


@pytest.mark.slow
@pytest.mark.parametrize("path, heading", SHORT_SECTIONS)
def test_the_short_example_runs(path, heading):
    namespace = _small_classifier()
    exec(compile(python_blocks(path, heading)[0], path, "exec"), namespace)
    res = namespace["res"]
    # 4 chains of a 3-class tanh network: λ̂ is a finite number and each chain contributed one.
    assert torch.isfinite(torch.tensor(res.lambdahat)) and len(res.lambdahat_per_chain) == 4
