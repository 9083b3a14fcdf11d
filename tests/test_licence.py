"""beamtwin is GPL-3.0-or-later (rosettasciio and abTEM, which it runs on, are): the package
metadata, the LICENSE file and the README say the same."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPDX = "GPL-3.0-or-later"


def test_the_package_metadata_names_the_licence() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == SPDX
    # An SPDX expression and a "License ::" classifier together are refused by setuptools.
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_the_licence_file_is_the_gpl_version_3() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE")
    assert "Version 3, 29 June 2007" in text.splitlines()[1]
    assert "TERMS AND CONDITIONS" in text and "END OF TERMS AND CONDITIONS" in text
    assert "(at your option) any later version" in text
    assert len(text) > 30_000  # the full text, not a pointer to it


def test_the_readme_states_the_licence() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Licence" in text
    assert f"`{SPDX}`" in text and "(LICENSE)" in text
