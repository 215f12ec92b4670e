"""requirements.txt, Pipfile and Pipfile.lock pin the same versions."""
import json
import re

from tests.conftest import REPO


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.txt line is not an exact pin: {line!r}"
            pins[_norm(name)] = version
    return pins


def test_core_pins():
    pins = _requirements()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.2" and pins["sacred"] == "0.8.7"
    assert int(pins["setuptools"].split(".")[0]) < 82


def test_lock_matches_requirements():
    lock = json.loads((REPO / "Pipfile.lock").read_text())["default"]
    locked = {_norm(k): v["version"].lstrip("=") for k, v in lock.items()}
    assert locked == _requirements()


def test_pipfile_pins_match_requirements():
    pins = _requirements()
    section = (REPO / "Pipfile").read_text().split("[packages]")[1].split("[")[0]
    entries = dict(re.findall(r'^([\w.-]+)\s*=\s*"==([^"]+)"', section, flags=re.M))
    assert entries and all(pins[_norm(k)] == v for k, v in entries.items())
