"""The rehearsal of an autonomous experiment on a scene: seed points -> fit the deep-kernel
model -> acquire the next probe position -> measure it -> update, until a budget, an
uncertainty level or a target is reached; and the simple strategies it is judged against
(random and raster), on the same scene with the same measurements.

Bookkeeping: a candidate is a probe position; candidate ``k`` is the position
``(ix, iy) = divmod(k, ny)`` of the scene (C order, the order of
:func:`simulations.image_patches`), at ``((ix + 0.5) step, (iy + 0.5) step)`` [Å]. A
measurement is read from the scene at ``(ix, iy)`` itself, never through a second index.

Scores: the *top region* is the ``top_fraction`` of positions where the true property is
largest; it is *found* at a position when a measured position lies within ``found_radius``
probe steps of it. Every step records the fraction of the top region found and the RMSE of the
predicted property map against the truth.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulations._errors import SimulationError
from simulations._rehearsal_dkl import (
    ACQUISITIONS,
    AcquisitionError,
    DeepKernelModel,
    DklSettings,
    acquisition_scores,
    image_patches,
)
from simulations._rehearsal_scene import PROPERTIES, Scene, SceneError

__all__ = [
    "STRATEGIES",
    "RehearsalError",
    "RehearsalRun",
    "RehearsalStep",
    "measurements_to_fraction",
    "rehearse",
    "strategy_order",
    "top_region",
]

STRATEGIES = ("dkl", "random", "raster")


class RehearsalError(SimulationError, ValueError):
    """A rehearsal that cannot run on its inputs (budget below the seed points, ...)."""


@dataclass(frozen=True)
class RehearsalStep:
    """One measurement: the candidate chosen, its probe position (indices and [Å]), the value
    measured there, the model's prediction and standard deviation there before measuring
    (NaN for seed points and baselines), the time from the last measurement to the choice
    [s], and the scores after it."""

    number: int
    index: int
    ix: int
    iy: int
    x: float
    y: float
    measured: float
    predicted: float
    uncertainty: float
    latency_s: float
    found_fraction: float
    rmse: float


@dataclass
class RehearsalRun:
    """A strategy's run: its steps, why it stopped, and the final prediction maps (DKL)."""

    strategy: str
    acquisition: str | None
    steps: list[RehearsalStep]
    stopped: str
    target_fraction: float
    mean_map: np.ndarray | None = None
    sd_map: np.ndarray | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def measurements_to(self, fraction: float) -> int | None:
        """Measurements until ``fraction`` of the top region was found (None: never)."""
        for step in self.steps:
            if step.found_fraction >= fraction - 1e-12:
                return step.number
        return None

    def column(self, name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in self.steps], dtype=float)


def top_region(truth: np.ndarray, fraction: float) -> np.ndarray:
    """The positions (a boolean map) holding the largest ``fraction`` of the values (at least
    one position; ties at the threshold included)."""
    if not 0 < fraction <= 1:
        raise RehearsalError(f"the top fraction must be in (0, 1], not {fraction}")
    count = max(1, round(fraction * truth.size))
    threshold = np.sort(truth, axis=None)[-count]
    return truth >= threshold


class _FoundTracker:
    """The fraction of the top region within ``radius`` probe steps of a measured position."""

    def __init__(self, top: np.ndarray, radius: float) -> None:
        self.top = top
        self.covered = np.zeros(top.shape, dtype=bool)
        self.total = int(top.sum())
        self.found = 0
        reach = math.floor(radius)
        self.offsets = [
            (dx, dy)
            for dx in range(-reach, reach + 1)
            for dy in range(-reach, reach + 1)
            if dx * dx + dy * dy <= radius * radius + 1e-9
        ]

    def add(self, ix: int, iy: int) -> float:
        nx, ny = self.top.shape
        for dx, dy in self.offsets:
            x, y = ix + dx, iy + dy
            if 0 <= x < nx and 0 <= y < ny and self.top[x, y] and not self.covered[x, y]:
                self.covered[x, y] = True
                self.found += 1
        return self.found / self.total


def strategy_order(strategy: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """The order a baseline measures candidates in: ``random`` (a seeded permutation; its
    head is also the DKL run's seed points) or ``raster`` (subsampled grids from coarse to
    fine: every 16th position of every 16th row, then the 8-grid's new positions, ... down to
    every position; row by row within a grid)."""
    nx, ny = shape
    if strategy == "random":
        return np.random.default_rng([seed, 11]).permutation(nx * ny)
    if strategy == "raster":
        taken = np.zeros(shape, dtype=bool)
        order: list[int] = []
        stride = 1 << max(0, int(math.log2(max(1, min(shape) // 4))))
        while stride >= 1:
            for ix in range(0, nx, stride):
                for iy in range(0, ny, stride):
                    if not taken[ix, iy]:
                        taken[ix, iy] = True
                        order.append(ix * ny + iy)
            stride //= 2
        return np.array(order, dtype=np.int64)
    raise RehearsalError(f"unknown strategy {strategy!r}; one of {list(STRATEGIES)}")


def measurements_to_fraction(
    order: np.ndarray, top: np.ndarray, *, fraction: float, radius: float
) -> int | None:
    """How many of ``order``'s candidates are measured before ``fraction`` of ``top`` is
    found (None: not even all of them)."""
    tracker = _FoundTracker(top, radius)
    ny = top.shape[1]
    for n, index in enumerate(order, start=1):
        ix, iy = divmod(int(index), ny)
        if tracker.add(ix, iy) >= fraction - 1e-12:
            return n
    return None


def _nearest_rmse(truth: np.ndarray, ixs: list[int], iys: list[int], values: list[float]) -> float:
    """RMSE of the nearest-measured-neighbour map against the truth (the baselines' map)."""
    from scipy.spatial import cKDTree

    nx, ny = truth.shape
    tree = cKDTree(np.column_stack([ixs, iys]))
    grid = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), axis=-1)
    _, nearest = tree.query(grid.reshape(-1, 2))
    estimate = np.asarray(values)[nearest].reshape(nx, ny)
    return float(np.sqrt(np.mean((estimate - truth) ** 2)))


def _check(
    scene: Scene, prop: str, acquisition: str, patch: int, budget: int, seed_points: int
) -> None:
    if prop not in PROPERTIES:
        raise SceneError(f"unknown property {prop!r}; one of {sorted(PROPERTIES)}")
    if acquisition not in ACQUISITIONS:
        raise AcquisitionError(
            f"unknown acquisition function {acquisition!r}; one of {sorted(ACQUISITIONS)}"
        )
    if seed_points < 2:
        raise RehearsalError(f"at least 2 seed points are needed, not {seed_points}")
    if budget < seed_points:
        raise RehearsalError(
            f"the budget of {budget} measurements is below the {seed_points} seed points"
        )
    if budget > scene.haadf.size:
        raise RehearsalError(
            f"the budget of {budget} measurements is over the scene's {scene.haadf.size} "
            "probe positions"
        )
    if patch > min(scene.shape):
        raise AcquisitionError(
            f"a patch of {patch} probe positions is larger than the scene {scene.shape}"
        )


def rehearse(
    scene: Scene,
    *,
    prop: str = "com",
    strategy: str = "dkl",
    acquisition: str = "ucb",
    patch: int = 8,
    budget: int = 200,
    seed_points: int = 10,
    dose: float | None = None,
    seed: int = 0,
    distance_penalty: float = 0.0,
    uncertainty_stop: float | None = None,
    target_fraction: float | None = None,
    top_fraction: float = 0.01,
    found_radius: float = 1.5,
    settings: DklSettings | None = None,
    rmse_every: int = 10,
    measure: Callable[[int, int], float] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> RehearsalRun:
    """Rehearse ``strategy`` (``dkl``, ``random`` or ``raster``) on ``scene`` for property
    ``prop`` with measurements at ``dose`` [e/Å²] (None: noise-free).

    DKL: ``seed_points`` random positions (the random baseline's first ones), then one
    position per step chosen by ``acquisition`` over every unmeasured position, the model
    refitted after each measurement; ``distance_penalty`` (>= 0) subtracts that many standard
    deviations of the scores per scene diagonal of distance from the last position. Stops at
    ``budget`` measurements, when the largest predictive sd of an unmeasured position is below
    ``uncertainty_stop`` [property unit], or once ``target_fraction`` of the top region is
    found. Deterministic for a given seed. ``measure(ix, iy)`` takes the measurement at a
    probe position (default: the scene's value there at ``dose``, seeded).

    Raises:
        RehearsalError, AcquisitionError, SceneError: inputs that cannot run (the message
            says which and why).
    """
    import pyro
    import torch

    settings = settings or DklSettings()
    _check(scene, prop, acquisition, patch, budget, seed_points)
    # One thread: the products are small, and more threads than free cores slow them down
    # many times over on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # pyro's modules keep their parameters in the global param store under their attribute
    # names: a model of its own store, or a second run would start from the first one's fit.
    with contextlib.ExitStack() as stack:
        stack.enter_context(pyro.get_param_store().scope())
        stack.callback(torch.set_num_threads, threads)
        return _rehearse(
            scene, prop=prop, strategy=strategy, acquisition=acquisition, patch=patch,
            budget=budget, seed_points=seed_points, dose=dose, seed=seed,
            distance_penalty=distance_penalty, uncertainty_stop=uncertainty_stop,
            target_fraction=target_fraction, top_fraction=top_fraction,
            found_radius=found_radius, settings=settings, rmse_every=rmse_every,
            measure=measure, progress=progress,
        )  # fmt: skip


def _rehearse(
    scene: Scene,
    *,
    prop: str,
    strategy: str,
    acquisition: str,
    patch: int,
    budget: int,
    seed_points: int,
    dose: float | None,
    seed: int,
    distance_penalty: float,
    uncertainty_stop: float | None,
    target_fraction: float | None,
    top_fraction: float,
    found_radius: float,
    settings: DklSettings,
    rmse_every: int,
    measure: Callable[[int, int], float] | None,
    progress: Callable[[float, str], None] | None,
) -> RehearsalRun:
    if distance_penalty < 0:
        raise RehearsalError(f"the distance penalty must be >= 0, not {distance_penalty}")
    nx, ny = scene.shape
    truth = scene.truth(prop)
    noisy = scene.measured(prop, dose, seed)
    top = top_region(truth, top_fraction)
    tracker = _FoundTracker(top, found_radius)
    goal = 1.0 if target_fraction is None else target_fraction
    steps: list[RehearsalStep] = []
    measured = np.zeros(nx * ny, dtype=bool)
    rows: list[int] = []
    values: list[float] = []
    ixs: list[int] = []
    iys: list[int] = []

    def take(ix: int, iy: int) -> float:
        return float(noisy[ix, iy])

    take_at = measure or take

    def record(index: int, predicted: float, sd: float, latency: float, rmse: float) -> None:
        ix, iy = divmod(int(index), ny)
        value = float(take_at(ix, iy))
        measured[index] = True
        rows.append(int(index))
        values.append(value)
        ixs.append(ix)
        iys.append(iy)
        found = tracker.add(ix, iy)
        x, y = (ix + 0.5) * scene.step, (iy + 0.5) * scene.step
        steps.append(
            RehearsalStep(
                len(steps) + 1, int(index), ix, iy, x, y, value, predicted, sd, latency,
                found, rmse,
            )
        )  # fmt: skip
        if progress is not None:
            progress(len(steps) / budget, f"{len(steps)}/{budget} measured")

    order = strategy_order("random" if strategy == "dkl" else strategy, (nx, ny), seed)
    nan = float("nan")
    if strategy != "dkl":
        for n, index in enumerate(order[:budget], start=1):
            last = n == budget or n % rmse_every == 0
            record(int(index), nan, nan, 0.0, nan)
            if last and n >= 1:
                rmse = _nearest_rmse(truth, ixs, iys, values)
                steps[-1] = RehearsalStep(**{**steps[-1].__dict__, "rmse": rmse})
            if steps[-1].found_fraction >= goal - 1e-12 and target_fraction is not None:
                return RehearsalRun(strategy, None, steps, "target", goal)
        return RehearsalRun(strategy, None, steps, "budget", goal)

    features = image_patches(scene.haadf, patch)
    model = DeepKernelModel(features, settings, seed)
    for index in order[:seed_points]:
        record(int(index), nan, nan, 0.0, nan)
    diagonal = math.hypot(nx, ny)
    all_ix, all_iy = np.divmod(np.arange(nx * ny), ny)
    stopped = "budget"
    mean = sd = np.zeros(0)
    while len(steps) < budget:
        if target_fraction is not None and steps[-1].found_fraction >= goal - 1e-12:
            stopped = "target"
            break
        started = time.perf_counter()
        mean, sd = model.observe(np.array(rows), np.array(values))
        if uncertainty_stop is not None and float(sd[~measured].max()) < uncertainty_stop:
            stopped = "uncertainty"
            break
        scores = acquisition_scores(
            acquisition, mean, sd, best=max(values), settings=settings, model=model,
            rows=np.arange(nx * ny), seed=seed * 1_000_003 + len(steps),
        )  # fmt: skip
        if distance_penalty > 0:
            finite = np.isfinite(scores)
            spread = float(scores[finite].std()) or 1.0
            distance = np.hypot(all_ix - ixs[-1], all_iy - iys[-1]) / diagonal
            scores = scores - distance_penalty * spread * distance
        scores[measured] = -np.inf
        chosen = int(np.argmax(scores))
        latency = time.perf_counter() - started
        rmse = float(np.sqrt(np.mean((mean - truth.reshape(-1)) ** 2)))
        record(chosen, float(mean[chosen]), float(sd[chosen]), latency, rmse)
    else:
        if target_fraction is not None and steps[-1].found_fraction >= goal - 1e-12:
            stopped = "target"
    if len(mean) == 0 or stopped == "budget" or stopped == "target":
        mean, sd = model.observe(np.array(rows), np.array(values))
    return RehearsalRun(
        "dkl", acquisition, steps, stopped, goal,
        mean_map=mean.reshape(nx, ny), sd_map=sd.reshape(nx, ny),
    )  # fmt: skip
