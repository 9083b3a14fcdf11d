"""What a virtual experiment will cost (memory, time) before it runs, and the limits that
refuse one that is too large.

The estimate counts FFT work: a multislice step on an ``n``-point grid costs about
``5 n log2 n`` floating-point operations per FFT (two per slice) plus the transmission; a
PRISM S-matrix costs one multislice per plane wave inside the aperture; each STEM ensemble
member then ``positions x plane waves²`` complex multiply-adds per detector region (4D-STEM:
abTEM's reduction, ``positions x plane waves x window`` and an FFT per position). The rate
(:data:`FLOPS_PER_SECOND`) is one CPU core's, measured roughly on the bench machine: the time
is an order of magnitude, enough to refuse a request that would run for days.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from simulations._errors import SimulationError

__all__ = [
    "FLOPS_PER_SECOND",
    "CostEstimate",
    "ExperimentLimits",
    "ExperimentTooLarge",
    "smooth_gpts",
]

FLOPS_PER_SECOND = 1.0e9


class ExperimentTooLarge(SimulationError, ValueError):
    """An experiment over the configured limits; the message carries the estimate."""


def _is_7_smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def smooth_gpts(extent: float, sampling: float) -> int:
    """The smallest 7-smooth grid size (factors 2, 3, 5, 7 only) whose pixel is at most
    ``sampling`` [Å] over ``extent`` [Å]: FFTs of such sizes are several times faster."""
    n = max(2, math.ceil(extent / sampling - 1e-9))
    while not _is_7_smooth(n):
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """The estimated cost of one experiment.

    ``memory_bytes`` [B], peak; ``seconds`` [s] on one core; ``gpts`` the potential's grid;
    ``slices``, ``positions`` (probe positions), ``members`` (ensemble size),
    ``configurations`` (frozen phonons), ``plane_waves`` (PRISM expansion, 0 without)."""

    memory_bytes: int
    seconds: float
    gpts: tuple[int, int]
    slices: int
    positions: int
    members: int
    configurations: int
    plane_waves: int

    def describe(self) -> str:
        return (
            f"estimated {self.memory_bytes / 2**20:.0f} MiB and {self.seconds:.1f} s "
            f"({self.gpts[0]}x{self.gpts[1]} grid, {self.slices} slices, {self.positions} "
            f"probe positions, {self.configurations} phonon configurations, {self.members} "
            "ensemble members)"
        )

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["gpts"] = list(self.gpts)
        return out


@dataclass(frozen=True, slots=True)
class ExperimentLimits:
    """Largest experiment the service runs: grid side [points], probe positions, ensemble
    members, peak memory [B] and time [s] of the estimate."""

    max_gpts: int = 2048
    max_positions: int = 256 * 256
    max_members: int = 256
    max_memory_bytes: int = 16 * 2**30
    max_seconds: float = 6 * 3600.0

    def check(self, estimate: CostEstimate) -> CostEstimate:
        """``estimate`` when within every limit; :class:`ExperimentTooLarge` naming the first
        limit exceeded, with the whole estimate, otherwise."""
        problems = []
        if max(estimate.gpts) > self.max_gpts:
            problems.append(f"grid {max(estimate.gpts)} points > {self.max_gpts}")
        if estimate.positions > self.max_positions:
            problems.append(f"{estimate.positions} probe positions > {self.max_positions}")
        if estimate.members > self.max_members:
            problems.append(f"ensemble of {estimate.members} > {self.max_members}")
        if estimate.memory_bytes > self.max_memory_bytes:
            problems.append(
                f"memory {estimate.memory_bytes / 2**20:.0f} MiB > "
                f"{self.max_memory_bytes / 2**20:.0f} MiB"
            )
        if estimate.seconds > self.max_seconds:
            problems.append(f"time {estimate.seconds:.0f} s > {self.max_seconds:.0f} s")
        if problems:
            raise ExperimentTooLarge(
                f"the experiment is over the limits ({'; '.join(problems)}): {estimate.describe()}"
            )
        return estimate


def fft_flops(gpts: tuple[int, int]) -> float:
    n = gpts[0] * gpts[1]
    return 5.0 * n * math.log2(max(n, 2))


def estimate(
    *,
    gpts: tuple[int, int],
    slices: int,
    positions: int,
    members: int,
    configurations: int,
    plane_waves: int,
    detector_pixels: int,
    detector_regions: int = 0,
) -> CostEstimate:
    """The cost of a run with these sizes (see the module docstring); ``positions`` 0 for a
    plane-wave mode, ``plane_waves`` > 0 for a PRISM ensemble, ``detector_pixels`` the
    pixels of one diffraction pattern kept per position (4D-STEM), ``detector_regions`` the
    annular and segment regions of a STEM ensemble (each member then costs
    ``positions x plane_waves²`` multiply-adds per region, after one Gram matrix of
    ``plane_waves² x grid`` per region; 0: abTEM's reduction, a wave and an FFT per
    position and member)."""
    n = gpts[0] * gpts[1]
    step = 2 * fft_flops(gpts) + 6.0 * n
    if plane_waves and detector_regions:
        flops = configurations * plane_waves * (slices * step + fft_flops(gpts))
        flops += configurations * detector_regions * 8.0 * plane_waves**2 * n
        flops += members * configurations * detector_regions * 8.0 * positions * plane_waves**2
        memory = 16 * plane_waves * n * 2 + 16 * detector_regions * plane_waves**2
    elif plane_waves:
        flops = configurations * plane_waves * slices * step
        flops += members * configurations * positions * (plane_waves * n * 0.1 + fft_flops(gpts))
        memory = 16 * plane_waves * n * 2
    elif positions:
        flops = members * configurations * positions * slices * step
        memory = 16 * n * min(positions, 64) * 2
    else:
        flops = configurations * slices * step + members * configurations * 3 * fft_flops(gpts)
        memory = 16 * n * 4
    memory += 4 * n * slices + 8 * positions * (detector_pixels + 8) * (members + 2)
    return CostEstimate(
        memory_bytes=int(memory),
        seconds=flops / FLOPS_PER_SECOND,
        gpts=gpts,
        slices=slices,
        positions=positions,
        members=members,
        configurations=configurations,
        plane_waves=plane_waves,
    )
