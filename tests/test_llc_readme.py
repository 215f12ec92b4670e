"""The Python examples of README "λ̂ for any model, from a notebook" run as written."""
import os
import re
from collections import OrderedDict

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import REPO

SECTION = "### λ̂ for any model, from a notebook"


def section_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    body = text.split(SECTION, 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_section_has_an_example_per_feature():
    code = "\n".join(section_blocks())
    for name in ["estimate_llc(", "plot_llc_trace", "param_mask=", "estimate_llc_per_layer", "DataLoader(train_set)",
                 "calibrate_epsilon", "plot_calibration", "OnlineLLC"]:
        assert name in code, name


@pytest.mark.slow
def test_the_section_examples_run_on_a_small_classifier(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(
        hidden=torch.nn.Linear(4, 8), act=torch.nn.Tanh(), fc=torch.nn.Linear(8, 3)))
    x_train = torch.randn(300, 4)
    y_train = model(x_train).argmax(1)
    namespace = {"model": model, "x_train": x_train, "y_train": y_train,
                 "train_set": TensorDataset(x_train, y_train)}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples save figures to the working directory
    try:
        for block in section_blocks():
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "trace.png").is_file() and (tmp_path / "calibration.png").is_file()
    assert namespace["online"].lambdahat and set(namespace["per_layer"]) == {"hidden", "fc"}
