"""Channel declarations within one batch are applied in frame order (no Kafka or database)."""

from __future__ import annotations

import numpy as np

from ingest._validate import ChannelDeclaration, ValidatedFrame
from ingest._worker import _declaration_rounds

S = 1_000_000_000


def _frame(instrument: str, t_ns: int, *decls: ChannelDeclaration) -> ValidatedFrame:
    return ValidatedFrame(
        instrument_id=instrument,
        publisher_id="p",
        frame_seq=0,
        channel_names=tuple(d.name for d in decls),
        declarations=tuple(decls),
        channel_index=np.zeros(0, np.int32),
        source_time_us=np.zeros(0, np.int64),
        value=np.zeros(0),
        seq=np.zeros(0, np.int64),
        first_time_ns=t_ns,
        last_time_ns=t_ns,
    )


def _ht(unit: str) -> ChannelDeclaration:
    return ChannelDeclaration("gun.high_tension", "gun", "voltage", "V", unit, 0.0, 1.5e6)


def _stage(unit: str) -> ChannelDeclaration:
    return ChannelDeclaration("stage.x", "stage", "length", "m", unit, None, None)


def test_a_unit_change_within_one_batch_gives_two_rounds_in_time_order() -> None:
    rounds = _declaration_rounds([_frame("a", 10 * S, _ht("kV")), _frame("a", 12 * S, _ht("V"))])
    assert [(t, {n: d.source_unit for n, d in ds.items()}) for t, ds in rounds["a"]] == [
        (10 * S, {"gun.high_tension": "kV"}),
        (12 * S, {"gun.high_tension": "V"}),
    ]


def test_repeated_identical_declarations_collapse_into_one_round() -> None:
    frames = [
        _frame("a", 11 * S, _ht("kV")),
        _frame("a", 10 * S, _ht("kV"), _stage("um")),
        _frame("a", 12 * S, _ht("kV"), _stage("um")),
    ]
    rounds = _declaration_rounds(frames)
    assert len(rounds["a"]) == 1
    first_ns, decls = rounds["a"][0]
    assert first_ns == 10 * S and set(decls) == {"gun.high_tension", "stage.x"}


def test_instruments_are_grouped_apart_and_frames_without_declarations_are_ignored() -> None:
    rounds = _declaration_rounds(
        [_frame("a", 1 * S, _ht("kV")), _frame("b", 2 * S, _ht("V")), _frame("a", 3 * S)]
    )
    assert set(rounds) == {"a", "b"}
    assert rounds["b"][0][1]["gun.high_tension"].source_unit == "V"


def test_a_change_back_and_forth_makes_a_round_per_change() -> None:
    units = ["kV", "V", "kV"]
    rounds = _declaration_rounds([_frame("a", i * S, _ht(u)) for i, u in enumerate(units)])
    assert [ds["gun.high_tension"].source_unit for _, ds in rounds["a"]] == units
