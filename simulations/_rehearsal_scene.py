"""Scenes for rehearsing an autonomous experiment: a virtual specimen with structural features,
its HAADF overview at every probe position, and at every probe position the ground truth of
the properties an autonomous run looks for, with what a measurement of each costs in noise.

A scene is a 2H-MoS2 monolayer (W dopants, S vacancies, an optional strained region and an
optional hole whose rim is an edge) scanned on ``positions`` x ``positions`` probe positions
``step`` [Å] apart. It is made by virtual experiments at a microscope state:

* ``com`` [mrad]: the magnitude of the centre-of-mass shift of the 4D-STEM pattern
  (:func:`simulations.run_experiment`, mode ``4dstem``, in tiles of the scan so that the
  patterns of one tile at a time are held), with the patterns' per-position angular spread
  that sets the noise of a measured CoM;
* ``haadf``: the overview, the twin's incoherent STEM image of the same specimen
  (:func:`simulations.preview_experiment`) sampled at the probe positions;
* ``edge_ratio`` [1]: an EELS-like ratio W / (W + Mo) of the metal edges' counts, from the local
  composition seen through the probe's footprint (every atom's inelastic signal spread by a
  Gaussian of ``edge_width`` [Å]).

Arrays are indexed ``[x, y]`` (axis 0 along x, as abTEM's scans). Making a full-size scene
takes minutes, so :func:`make_scene` keeps it in a content-addressed cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simulations._errors import SimulationError
from simulations._experiment_spec import ExperimentSpecV1, StateV1
from simulations._specimens import _orthogonal

__all__ = [
    "PROPERTIES",
    "SCENE_PRESETS",
    "Scene",
    "SceneError",
    "SceneRecipe",
    "make_scene",
    "scene_key",
]

#: Bumped when what a recipe makes changes (invalidates cached scenes).
SCENE_FORMAT = 1
#: The properties a scene knows: name -> what it is.
PROPERTIES: dict[str, str] = {
    "com": "magnitude of the 4D-STEM centre-of-mass shift [mrad]",
    "edge_ratio": "EELS-like W / (W + Mo) edge-count ratio of the local composition [1]",
}
#: Fraction of the electrons that give a counted metal-edge event per unit of local atom
#: weight (an assumed collection efficiency x partial cross-section; sets the ratio's noise).
EDGE_YIELD = 2e-3
_A = 3.19  # MoS2 lattice constant [Å]


class SceneError(SimulationError, ValueError):
    """A scene recipe that cannot be made (unknown preset or property, sizes out of range)."""


@dataclass(frozen=True)
class SceneRecipe:
    """What a scene is made of. Lengths in Å; ``strain`` is the peak relative expansion of the
    strained region (0: none); ``hole_radius`` 0: no hole."""

    name: str = "mos2-dopants"
    positions: int = 128
    step: float = 0.3
    dopants: int = 8
    vacancies: int = 12
    strain: float = 0.0
    strain_radius: float = 6.0
    hole_radius: float = 0.0
    seed: int = 0
    potential_sampling: float = 0.2
    max_angle: float = 45.0
    edge_width: float = 0.8
    tile: int = 64

    def __post_init__(self) -> None:
        if not 8 <= self.positions <= 512:
            raise SceneError(f"a scene has 8..512 probe positions a side, not {self.positions}")
        if not 0.05 <= self.step <= 2.0:
            raise SceneError(f"the probe step must be 0.05..2 Å, not {self.step}")
        if self.dopants < 0 or self.vacancies < 0 or self.hole_radius < 0:
            raise SceneError("dopants, vacancies and hole_radius must be >= 0")
        if not 0 <= self.strain <= 0.2:
            raise SceneError(f"strain must be 0..0.2, not {self.strain}")

    def resized(self, positions: int) -> SceneRecipe:
        """The same scene on ``positions`` a side: dopants and vacancies scaled with the
        field's area (at least one of each the recipe has), lengths with its side."""
        area = (positions / self.positions) ** 2
        side = positions / self.positions
        return replace(
            self,
            positions=positions,
            dopants=max(min(self.dopants, 1), round(self.dopants * area)),
            vacancies=max(min(self.vacancies, 1), round(self.vacancies * area)),
            strain_radius=self.strain_radius * side,
            hole_radius=self.hole_radius * side,
            tile=min(self.tile, positions),
        )


#: The built-in scenes at full size (128 x 128 probe positions, 0.3 Å apart: 38 Å a side).
SCENE_PRESETS: dict[str, SceneRecipe] = {
    r.name: r
    for r in (
        SceneRecipe("mos2-dopants", dopants=8, vacancies=12, seed=1),
        SceneRecipe("mos2-strained", dopants=6, vacancies=8, strain=0.05, seed=2),
        SceneRecipe("mos2-edge", dopants=6, vacancies=6, hole_radius=6.0, seed=3),
    )
}


@dataclass
class Scene:
    """A scene: the overview, each property's truth and what sets its measurement noise.

    ``haadf`` [arb.], ``com_x``/``com_y`` [mrad] and ``com_spread`` (the pattern's angular
    standard deviation per axis [mrad]), ``metal_weight`` and ``dopant_weight`` (probe-weighted
    metal and W atoms [1]); all ``(positions, positions)``, indexed ``[x, y]``; probe ``x`` at
    ``ix * step`` [Å]."""

    recipe: SceneRecipe
    haadf: np.ndarray
    com_x: np.ndarray
    com_y: np.ndarray
    com_spread: np.ndarray
    metal_weight: np.ndarray
    dopant_weight: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.haadf.shape[0]), int(self.haadf.shape[1]))

    @property
    def step(self) -> float:
        return self.recipe.step

    def truth(self, prop: str) -> np.ndarray:
        """The noise-free property at every probe position."""
        if prop == "com":
            return np.hypot(self.com_x, self.com_y)
        if prop == "edge_ratio":
            return self.dopant_weight / np.maximum(self.metal_weight, 1e-12)
        raise SceneError(f"unknown property {prop!r}; one of {sorted(PROPERTIES)}")

    def measured(self, prop: str, dose: float | None, seed: int) -> np.ndarray:
        """One measurement at every probe position at ``dose`` [e/Å²] (``None``: noise-free),
        seeded: every strategy of a rehearsal with the same seed sees the same value at a
        position.

        ``com``: the CoM of ``n = dose * step²`` electrons scatters by ``spread / sqrt(n)`` per
        axis around the true one. ``edge_ratio``: Poisson counts of the W and Mo edges,
        ``n * EDGE_YIELD * weight`` expected, their ratio."""
        truth = self.truth(prop)
        if dose is None:
            return truth
        if not dose > 0:
            raise SceneError(f"the dose must be > 0 e/Å², not {dose}")
        electrons = dose * self.step**2
        rng = np.random.default_rng([seed, 7])
        if prop == "com":
            sd = self.com_spread / math.sqrt(electrons)
            x = self.com_x + sd * rng.standard_normal(self.com_x.shape)
            y = self.com_y + sd * rng.standard_normal(self.com_y.shape)
            return np.hypot(x, y)
        dopant = rng.poisson(electrons * EDGE_YIELD * self.dopant_weight)
        molybdenum = rng.poisson(
            electrons * EDGE_YIELD * np.clip(self.metal_weight - self.dopant_weight, 0, None)
        )
        total = dopant + molybdenum
        return np.where(total > 0, dopant / np.maximum(total, 1), 0.0).astype(float)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "haadf": self.haadf,
            "com_x": self.com_x,
            "com_y": self.com_y,
            "com_spread": self.com_spread,
            "metal_weight": self.metal_weight,
            "dopant_weight": self.dopant_weight,
        }


def scene_key(recipe: SceneRecipe, state: StateV1) -> str:
    """SHA-256 (hex) of what makes the scene: the recipe, the state and the format."""
    text = json.dumps(
        {"recipe": asdict(recipe), "state": state.model_dump(mode="json"), "v": SCENE_FORMAT},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _atoms(recipe: SceneRecipe) -> Any:
    """The specimen: an orthogonal MoS2 cell covering the scanned field, with its features
    placed inside the field (chosen with the recipe's seed)."""
    from ase.build import mx2

    field_size = recipe.positions * recipe.step
    layer = mx2("MoS2", kind="2H", a=_A, thickness=3.19, size=(1, 1, 1), vacuum=2.0)
    rect = _orthogonal(layer)  # a x a*sqrt(3), two formula units
    nx = max(1, math.ceil(field_size / rect.cell[0, 0]))
    ny = max(1, math.ceil(field_size / rect.cell[1, 1]))
    atoms = rect.repeat((nx, ny, 1))
    rng = np.random.default_rng(recipe.seed)
    lengths = atoms.cell.lengths()
    centre = np.array([field_size / 2, field_size / 2])
    if recipe.strain > 0:
        # A local expansion: radial displacement u = strain * r * exp(-r²/2w²).
        offset = atoms.positions[:, :2] - centre
        r2 = (offset**2).sum(axis=1, keepdims=True)
        atoms.positions[:, :2] += (
            recipe.strain * offset * np.exp(-r2 / (2 * recipe.strain_radius**2))
        )
    if recipe.hole_radius > 0:
        hole = centre + np.array([field_size / 4, -field_size / 4])
        inside = ((atoms.positions[:, :2] - hole) ** 2).sum(axis=1) < recipe.hole_radius**2
        del atoms[np.flatnonzero(inside).tolist()]
    in_field = (atoms.positions[:, 0] < field_size) & (atoms.positions[:, 1] < field_size)
    metal = np.flatnonzero((atoms.numbers == 42) & in_field)
    sulfur = np.flatnonzero((atoms.numbers == 16) & in_field)
    if recipe.dopants > len(metal) or recipe.vacancies > len(sulfur):
        raise SceneError(
            f"the field holds {len(metal)} Mo and {len(sulfur)} S atoms: "
            f"{recipe.dopants} dopants or {recipe.vacancies} vacancies do not fit"
        )
    numbers = atoms.numbers.copy()
    numbers[rng.choice(metal, size=recipe.dopants, replace=False)] = 74
    atoms.numbers = numbers
    del atoms[[int(i) for i in rng.choice(sulfur, size=recipe.vacancies, replace=False)]]
    atoms.set_cell([lengths[0], lengths[1], lengths[2]], scale_atoms=False)
    atoms.pbc = True
    atoms.wrap()
    return atoms


def _structure_text(atoms: Any) -> str:
    buffer = io.StringIO()
    atoms.write(buffer, format="extxyz")
    return buffer.getvalue()


def _spec(recipe: SceneRecipe, state: StateV1, text: str, mode: dict[str, Any]) -> ExperimentSpecV1:
    return ExperimentSpecV1.model_validate(
        {
            "state": state.model_dump(mode="json"),
            "specimen": {"kind": "structure", "format": "extxyz", "content": text},
            "mode": mode,
            "sampling": recipe.potential_sampling,
            "slice_thickness": 2.0,
            "seed": recipe.seed,
        }
    )


def _com_tiles(
    recipe: SceneRecipe,
    state: StateV1,
    text: str,
    progress: Callable[[float, str], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from simulations._experiment import run_experiment

    n, step, tile = recipe.positions, recipe.step, recipe.tile
    com_x, com_y, spread = (np.zeros((n, n)) for _ in range(3))
    starts = [(i, j) for i in range(0, n, tile) for j in range(0, n, tile)]
    for done, (i0, j0) in enumerate(starts):
        if progress is not None:
            progress(0.05 + 0.85 * done / len(starts), f"4D-STEM tile {done + 1}/{len(starts)}")
        i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
        # Probe positions sit at the centre of their step (no position on the float boundary).
        mode = {
            "mode": "4dstem",
            "max_angle": recipe.max_angle,
            "scan": {
                "start": [(i0 + 0.5) * step, (j0 + 0.5) * step],
                "end": [(i1 + 0.5) * step - 1e-6, (j1 + 0.5) * step - 1e-6],
                "sampling": step,
            },
        }
        result = run_experiment(_spec(recipe, state, text, mode), state)
        patterns = result.arrays["diffraction"]
        if patterns.shape[:2] != (i1 - i0, j1 - j0):
            raise SceneError(
                f"a scan tile came back {patterns.shape[:2]}, not {(i1 - i0, j1 - j0)}"
            )
        sampling = result.axes["diffraction"]["sampling"][-2:]
        kx = (np.arange(patterns.shape[2]) - patterns.shape[2] // 2) * sampling[0]
        ky = (np.arange(patterns.shape[3]) - patterns.shape[3] // 2) * sampling[1]
        total = patterns.sum(axis=(2, 3))
        cx = np.einsum("xyij,i->xy", patterns, kx) / total
        cy = np.einsum("xyij,j->xy", patterns, ky) / total
        kx2 = np.einsum("xyij,i->xy", patterns, kx**2) / total
        ky2 = np.einsum("xyij,j->xy", patterns, ky**2) / total
        com_x[i0:i1, j0:j1] = cx
        com_y[i0:i1, j0:j1] = cy
        spread[i0:i1, j0:j1] = np.sqrt(np.clip((kx2 - cx**2 + ky2 - cy**2) / 2, 0, None))
    return com_x, com_y, spread


def _probe_grid(recipe: SceneRecipe) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(recipe.positions) + 0.5) * recipe.step
    return np.meshgrid(centres, centres, indexing="ij")


def _haadf(recipe: SceneRecipe, state: StateV1, text: str) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    from simulations._preview import preview_experiment

    mode = {"mode": "stem", "detectors": [{"name": "haadf", "inner": 60.0, "outer": 200.0}]}
    preview = preview_experiment(_spec(recipe, state, text, mode), state)
    x, y = _probe_grid(recipe)
    coords = np.stack([x / preview.sampling[0], y / preview.sampling[1]])
    return np.asarray(map_coordinates(preview.image, coords, order=1, mode="grid-wrap"))


def _edge_weights(recipe: SceneRecipe, atoms: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probe-weighted metal and W atoms at every probe position (periodic images counted)."""
    x, y = _probe_grid(recipe)
    lengths = atoms.cell.lengths()
    metal = np.zeros_like(x)
    dopant = np.zeros_like(x)
    reach = 4 * recipe.edge_width
    for position, number in zip(atoms.positions, atoms.numbers, strict=True):
        if number not in (42, 74):
            continue
        dx = (x - position[0] + lengths[0] / 2) % lengths[0] - lengths[0] / 2
        dy = (y - position[1] + lengths[1] / 2) % lengths[1] - lengths[1] / 2
        near = (np.abs(dx) < reach) & (np.abs(dy) < reach)
        weight = np.exp(-(dx[near] ** 2 + dy[near] ** 2) / (2 * recipe.edge_width**2))
        metal[near] += weight
        if number == 74:
            dopant[near] += weight
    return metal, dopant


def make_scene(
    recipe: SceneRecipe,
    state: StateV1,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> Scene:
    """Make the scene of ``recipe`` at the microscope ``state``, or read it from
    ``cache_dir`` (``rehearsal-scene-<scene_key>.npz``) when it was made before; a new scene
    is written there (atomically) for the next time."""
    key = scene_key(recipe, state)
    path = None if cache_dir is None else Path(cache_dir) / f"rehearsal-scene-{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as stored:
            arrays = {name: np.asarray(stored[name]) for name in stored.files if name != "doc"}
            parameters = json.loads(str(stored["doc"]))
        if progress is not None:
            progress(0.9, "scene from the cache")
        return Scene(recipe=recipe, parameters={**parameters, "cached": True}, **arrays)
    atoms = _atoms(recipe)
    text = _structure_text(atoms)
    if progress is not None:
        progress(0.02, "specimen built")
    com_x, com_y, spread = _com_tiles(recipe, state, text, progress)
    metal, dopant = _edge_weights(recipe, atoms)
    scene = Scene(
        recipe=recipe,
        haadf=_haadf(recipe, state, text),
        com_x=com_x,
        com_y=com_y,
        com_spread=spread,
        metal_weight=metal,
        dopant_weight=dopant,
        parameters={
            "scene_key": key,
            "atoms": len(atoms),
            "cell": [float(v) for v in atoms.cell.lengths()],
            "state": state.model_dump(mode="json"),
            "recipe": asdict(recipe),
        },
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.partial")
        with os.fdopen(handle, "wb") as out:
            document: dict[str, Any] = {"doc": json.dumps(scene.parameters), **scene.arrays()}
            np.savez_compressed(out, **document)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from other users
        os.replace(temporary, path)
    return scene
