"""What a package carries beside its code: the licence pyproject declares, and how to cite it."""

import re
from pathlib import Path

import yaml

from groupae_cli import __version__

ROOT = Path(__file__).resolve().parent.parent


def test_license_file_is_the_licence_pyproject_declares():
    declared = re.search(r'^license = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT" and text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_citation_names_the_tool_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"message", "title", "authors"} <= set(cff)
    assert str(cff["version"]) == __version__ and cff["license"] == "MIT"
    (paper,) = cff["references"]
    assert paper["title"] == "Unsupervised Learning of Group Invariant and Equivariant Representations"
    assert paper["year"] == 2022 and paper["authors"][0]["family-names"] == "Winter"
    assert any("2202.07559" in i["value"] for i in paper["identifiers"])
