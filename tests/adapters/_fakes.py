"""A fake of JEOL PyJEM's ``TEM3``: the classes and getters the adapter calls, with PyJEM's
units (stage in nm and degrees, HT in V, lenses and deflectors as raw DAC counts), and faults
to inject: a getter that raises, or one that hangs until released."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class FakeMicroscope:
    ht_v: float = 200_000.0
    stage: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    lenses: dict[str, int] = field(
        default_factory=lambda: {
            "CL1": 0x8000,
            "CL2": 0x7F00,
            "CL3": 0xFF00,
            "CM": 0x4000,
            "OLc": 2345,
            "OLf": 12345,
            "OM": 0x1234,
            "IL1": 0xFFF0,
            "IL2": 0x2000,
            "IL3": 1234,
            "PL1": 0x3000,
        }
    )
    ols: list[int] = field(default_factory=lambda: [32768, 32768])
    spot_size: int = 3
    #: Faults: the next ``raise_next`` reads of the stage raise; while ``hang`` is set, a read
    #: of the stage blocks until ``release`` is set.
    raise_next: int = 0
    hang: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    stage_reads: int = 0

    def tem3(self) -> FakeTEM3:
        return FakeTEM3(self)


class FakeTEM3:
    """Stands in for ``PyJEM.TEM3`` (a module of classes)."""

    def __init__(self, scope: FakeMicroscope) -> None:
        scope_ = scope

        class HT3:
            def GetHtValue(self) -> float:
                return scope_.ht_v

        class Stage3:
            def GetPos(self) -> list[float]:
                scope_.stage_reads += 1
                if scope_.raise_next > 0:
                    scope_.raise_next -= 1
                    raise OSError("TEM3: communication error with the stage controller")
                if scope_.hang:
                    scope_.release.wait(30)
                return list(scope_.stage)

        class Lens3:
            def __getattr__(self, name: str) -> object:
                if name.startswith("Get") and name[3:] in scope_.lenses:
                    return lambda: scope_.lenses[name[3:]]
                raise AttributeError(name)

        class Def3:
            def GetOLs(self) -> list[int]:
                return list(scope_.ols)

        class EOS3:
            def GetSpotSize(self) -> int:
                return scope_.spot_size

        self.HT3, self.Stage3, self.Lens3, self.Def3, self.EOS3 = HT3, Stage3, Lens3, Def3, EOS3
