"""docs/adapters.md lists every row of every mapping table, as the code has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import JEOL_MAPPING, NION_MAPPING, TFS_MAPPING, ChannelMap

DOC = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


@pytest.mark.parametrize(
    "row", [*NION_MAPPING, *TFS_MAPPING, *JEOL_MAPPING], ids=lambda r: r.vendor_name
)
def test_every_mapping_row_is_documented(row: ChannelMap) -> None:
    calibrated = "yes" if row.calibrated else "**no** (`uncalibrated`)"
    line = (
        f"| `{row.vendor_name}` | `{row.channel}` | {row.quantity} | `{row.unit}` | "
        f"{row.group} | {calibrated} |"
    )
    assert line in DOC.read_text(encoding="utf-8")
