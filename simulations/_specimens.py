"""Specimens for virtual experiments: built-in ones made with ASE, and user structures.

Every specimen is an :class:`ase.Atoms` with an orthogonal cell whose z axis is the beam
direction (the zone axis), lengths in [Å]. Built-in specimens take their parameters (size,
thickness, seed) by keyword; user structures are read by :mod:`ase.io` from CIF, XYZ /
extended XYZ or POSCAR text, tiled and oriented. :class:`SpecimenLimits` caps the atom count
and the cell; a specimen over a limit, an unknown element or an unreadable file raises a
:class:`SpecimenError` with a message that says which.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk, mx2, surface
from ase.cluster import Octahedron
from ase.data import chemical_symbols
from ase.spacegroup import crystal

from simulations._errors import SimulationError

__all__ = [
    "BUILTIN_SPECIMENS",
    "STRUCTURE_FORMATS",
    "BuiltinSpecimen",
    "SpecimenError",
    "SpecimenLimitError",
    "SpecimenLimits",
    "build_specimen",
    "read_structure",
    "structure_hash",
]


class SpecimenError(SimulationError, ValueError):
    """A specimen cannot be made: an unknown built-in or element, bad parameters, a structure
    file that cannot be read."""


class SpecimenLimitError(SpecimenError):
    """A specimen over the configured limits on atoms or cell size."""


@dataclass(frozen=True, slots=True)
class SpecimenLimits:
    """Largest specimen a virtual experiment accepts.

    ``max_atoms`` [1]; ``max_extent`` [Å], the longest lateral cell side; ``max_thickness``
    [Å], the cell's extent along the beam.
    """

    max_atoms: int = 200_000
    max_extent: float = 400.0
    max_thickness: float = 1000.0

    def check(self, atoms: Atoms) -> Atoms:
        """``atoms`` itself when it is within the limits; :class:`SpecimenLimitError` names the
        quantity over its limit otherwise."""
        if len(atoms) == 0:
            raise SpecimenError("the specimen has no atoms")
        if len(atoms) > self.max_atoms:
            raise SpecimenLimitError(
                f"the specimen has {len(atoms)} atoms, over the limit of {self.max_atoms}"
            )
        lengths = atoms.cell.lengths()
        if max(lengths[:2]) > self.max_extent:
            raise SpecimenLimitError(
                f"the specimen's cell is {max(lengths[:2]):.1f} Å wide, over the limit of "
                f"{self.max_extent:.1f} Å"
            )
        if lengths[2] > self.max_thickness:
            raise SpecimenLimitError(
                f"the specimen is {lengths[2]:.1f} Å thick, over the limit of "
                f"{self.max_thickness:.1f} Å"
            )
        return atoms


def _element(symbol: str) -> str:
    if symbol not in chemical_symbols or symbol == "X":
        raise SpecimenError(f"unknown element {symbol!r}")
    return symbol


def _repeats(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise SpecimenError(f"{name} must be an integer between 1 and 1000, not {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SpecimenError(f"{name} must be a positive number, not {value!r}")
    return float(value)


def _orthogonal(atoms: Atoms) -> Atoms:
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell, np.diag(np.diag(cell)), atol=1e-6):
        # abTEM needs an orthogonal cell; the import is deferred because it is heavy.
        from abtem import orthogonalize_cell

        atoms = orthogonalize_cell(atoms)
    atoms.wrap()
    return atoms


def strontium_titanate(*, repeats: int = 2, layers: int = 4) -> Atoms:
    """SrTiO3 along [001]: ``repeats`` x ``repeats`` unit cells (a = 3.905 Å) laterally,
    ``layers`` unit cells thick; Sr columns and Ti-O columns alternate in projection."""
    cell = crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        spacegroup=221,
        cellpar=[3.905, 3.905, 3.905, 90, 90, 90],
    )
    return cell * (_repeats(repeats, "repeats"), repeats, _repeats(layers, "layers"))


def silicon_110(*, repeats: int = 1, layers: int = 4) -> Atoms:
    """Si (a = 5.431 Å) along [110] (the dumbbell projection), ``layers`` (110) repeats thick."""
    si = bulk("Si", "diamond", a=5.431, cubic=True)
    slab = surface(si, (1, 1, 0), _repeats(layers, "layers"), periodic=True)
    return _orthogonal(slab * (_repeats(repeats, "repeats"), repeats, 1))


def amorphous_carbon(
    *, extent: float = 40.0, thickness: float = 10.0, density: float = 0.1, seed: int = 0
) -> Atoms:
    """An amorphous carbon film: C atoms at uniformly random positions (seeded), ``density``
    [atoms/Å³] (0.1 ≈ 2 g/cm³), ``extent`` x ``extent`` x ``thickness`` [Å]."""
    extent = _positive(extent, "extent")
    thickness = _positive(thickness, "thickness")
    count = int(_positive(density, "density") * extent * extent * thickness)
    rng = np.random.default_rng(seed)
    positions = rng.uniform((0, 0, 0), (extent, extent, thickness), size=(count, 3))
    return Atoms(
        numbers=np.full(count, 6),
        positions=positions,
        cell=(extent, extent, thickness),
        pbc=True,
    )


def gold_on_carbon(
    *,
    particle_size: int = 4,
    extent: float = 30.0,
    support_thickness: float = 10.0,
    seed: int = 0,
) -> Atoms:
    """A Au octahedron (``particle_size`` atoms along an edge, fcc a = 4.08 Å) centred on an
    amorphous carbon support ``support_thickness`` [Å] thick, cell ``extent`` [Å] wide; the
    beam enters through the particle."""
    particle = Octahedron("Au", _repeats(particle_size, "particle_size"), latticeconstant=4.08)
    support = amorphous_carbon(extent=extent, thickness=support_thickness, seed=seed)
    size = particle.positions.max(axis=0) - particle.positions.min(axis=0)
    if max(size[:2]) > extent:
        raise SpecimenError(
            f"a Au particle of {max(size[:2]):.1f} Å does not fit in a {extent:.1f} Å cell"
        )
    particle.positions -= particle.positions.min(axis=0)
    particle.positions += ((extent - size[0]) / 2, (extent - size[1]) / 2, 1.0)
    support.positions[:, 2] += size[2] + 2.0
    atoms = particle + support
    atoms.cell = (extent, extent, size[2] + 2.0 + support_thickness)
    atoms.pbc = True
    return atoms


def molybdenum_disulfide(
    *,
    repeats: int = 3,
    dopant: str = "W",
    dopants: int = 1,
    vacancies: int = 1,
    seed: int = 0,
) -> Atoms:
    """A 2H-MoS2 monolayer (a = 3.19 Å), orthogonal cell of ``repeats`` x ``repeats``
    rectangular cells, with ``dopants`` Mo atoms replaced by ``dopant`` and ``vacancies`` S
    atoms removed (chosen with ``seed``); 2 Å of vacuum on each side."""
    layer = mx2("MoS2", kind="2H", a=3.19, thickness=3.19, size=(1, 1, 1), vacuum=2.0)
    layer = _orthogonal(layer) * (_repeats(repeats, "repeats"), repeats, 1)
    rng = np.random.default_rng(seed)
    metal = np.flatnonzero(layer.numbers == 42)
    sulfur = np.flatnonzero(layer.numbers == 16)
    if not 0 <= dopants <= len(metal) or not 0 <= vacancies <= len(sulfur):
        raise SpecimenError(
            f"a {repeats}x{repeats} MoS2 cell has {len(metal)} Mo and {len(sulfur)} S atoms: "
            f"{dopants} dopants or {vacancies} vacancies do not fit"
        )
    symbols = layer.get_chemical_symbols()
    for index in rng.choice(metal, size=dopants, replace=False):
        symbols[index] = _element(dopant)
    layer.set_chemical_symbols(symbols)
    del layer[[int(i) for i in rng.choice(sulfur, size=vacancies, replace=False)]]
    return layer


@dataclass(frozen=True, slots=True)
class BuiltinSpecimen:
    """A built-in specimen: its name, what it shows, and the function that builds it."""

    name: str
    description: str
    build: Callable[..., Atoms]
    defaults: Mapping[str, Any]


BUILTIN_SPECIMENS: dict[str, BuiltinSpecimen] = {
    s.name: s
    for s in (
        BuiltinSpecimen(
            "srtio3-001",
            "SrTiO3 perovskite along [001]: Sr and Ti-O columns (Z-contrast)",
            strontium_titanate,
            {"repeats": 2, "layers": 4},
        ),
        BuiltinSpecimen(
            "si-110",
            "Si along [110]: dumbbells 1.36 Å apart",
            silicon_110,
            {"repeats": 1, "layers": 4},
        ),
        BuiltinSpecimen(
            "au-on-carbon",
            "Au octahedral nanoparticle on an amorphous carbon support",
            gold_on_carbon,
            {"particle_size": 4, "extent": 30.0, "support_thickness": 10.0, "seed": 0},
        ),
        BuiltinSpecimen(
            "mos2-monolayer",
            "2H-MoS2 monolayer with substitutional dopants and S vacancies",
            molybdenum_disulfide,
            {"repeats": 3, "dopant": "W", "dopants": 1, "vacancies": 1, "seed": 0},
        ),
        BuiltinSpecimen(
            "amorphous-carbon",
            "amorphous carbon film: Thon rings in HRTEM",
            amorphous_carbon,
            {"extent": 40.0, "thickness": 10.0, "density": 0.1, "seed": 0},
        ),
    )
}


def build_specimen(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    limits: SpecimenLimits | None = None,
) -> Atoms:
    """The built-in specimen ``name`` (a key of :data:`BUILTIN_SPECIMENS`) with its
    parameters, checked against ``limits`` (default :class:`SpecimenLimits`)."""
    if name not in BUILTIN_SPECIMENS:
        raise SpecimenError(
            f"unknown specimen {name!r}; the built-in ones are {sorted(BUILTIN_SPECIMENS)}"
        )
    specimen = BUILTIN_SPECIMENS[name]
    given = dict(parameters or {})
    unknown = set(given) - set(specimen.defaults)
    if unknown:
        raise SpecimenError(
            f"specimen {name!r} has no parameter {sorted(unknown)}; "
            f"it takes {sorted(specimen.defaults)}"
        )
    _check_size_before_building(name, {**specimen.defaults, **given}, limits or SpecimenLimits())
    atoms = specimen.build(**{**specimen.defaults, **given})
    return (limits or SpecimenLimits()).check(atoms)


def _check_size_before_building(
    name: str, params: Mapping[str, Any], limits: SpecimenLimits
) -> None:
    # A rough atom count, so that a huge request is refused before ASE allocates it.
    per_cell = {"srtio3-001": 5, "si-110": 4, "mos2-monolayer": 6}
    if name in per_cell:
        repeats, layers = params.get("repeats", 1), params.get("layers", 1)
        if isinstance(repeats, int) and isinstance(layers, int):
            count = per_cell[name] * repeats * repeats * layers
            if count > limits.max_atoms:
                raise SpecimenLimitError(
                    f"specimen {name!r} would have about {count} atoms, over the limit of "
                    f"{limits.max_atoms}"
                )
    if name in ("amorphous-carbon", "au-on-carbon"):
        extent = params.get("extent", 0.0)
        thickness = params.get("thickness", params.get("support_thickness", 0.0))
        if isinstance(extent, int | float) and isinstance(thickness, int | float):
            count = int(params.get("density", 0.1) * extent * extent * thickness)
            if count > limits.max_atoms or extent > limits.max_extent:
                raise SpecimenLimitError(
                    f"specimen {name!r} would have about {count} atoms in a {extent} Å cell, "
                    f"over the limits ({limits.max_atoms} atoms, {limits.max_extent} Å)"
                )


#: Structure formats a user may upload -> the format name ase.io reads.
STRUCTURE_FORMATS: dict[str, str] = {
    "cif": "cif",
    "xyz": "xyz",
    "extxyz": "extxyz",
    "poscar": "vasp",
}


def read_structure(
    text: str,
    *,
    format: str,
    tiling: tuple[int, int, int] = (1, 1, 1),
    zone_axis: tuple[int, int, int] = (0, 0, 1),
    layers: int = 1,
    limits: SpecimenLimits | None = None,
) -> Atoms:
    """A user structure from the text of a CIF, XYZ / extended XYZ or POSCAR file.

    ``zone_axis`` (h, k, l): the crystal is cut so that the normal of the (hkl) planes lies
    along the beam (for a cubic crystal, the [hkl] zone axis), ``layers`` of them thick; the
    default (0, 0, 1) keeps the cell as given. ``tiling`` repeats the oriented cell along x, y
    and z. A plain XYZ file has no cell: it gets the bounding box plus 2 Å of vacuum.
    """
    if format not in STRUCTURE_FORMATS:
        raise SpecimenError(
            f"unknown structure format {format!r}; use one of {sorted(STRUCTURE_FORMATS)}"
        )
    from ase.io import read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = read(io.StringIO(text), format=STRUCTURE_FORMATS[format])
    except Exception as exc:  # ase.io raises anything from KeyError to StopIteration
        raise SpecimenError(
            f"cannot read the {format} structure: {exc or type(exc).__name__}"
        ) from exc
    if isinstance(atoms, list):
        atoms = atoms[-1]
    for symbol in set(atoms.get_chemical_symbols()):
        _element(symbol)
    if len(atoms) == 0:
        raise SpecimenError(f"the {format} structure has no atoms")
    if atoms.cell.rank < 3:
        atoms.center(vacuum=2.0)
    if tuple(zone_axis) != (0, 0, 1):
        if not any(zone_axis):
            raise SpecimenError("the zone axis (0, 0, 0) has no direction")
        atoms = surface(atoms, tuple(zone_axis), _repeats(layers, "layers"), periodic=True)
    elif layers != 1:
        atoms = atoms * (1, 1, _repeats(layers, "layers"))
    for value in tiling:
        _repeats(value, "tiling")
    limits = limits or SpecimenLimits()
    estimated = len(atoms) * tiling[0] * tiling[1] * tiling[2]
    if estimated > limits.max_atoms:
        raise SpecimenLimitError(
            f"the tiled structure would have {estimated} atoms, over the limit of "
            f"{limits.max_atoms}"
        )
    atoms = _orthogonal(atoms * tuple(tiling))
    return limits.check(atoms)


def structure_hash(atoms: Atoms) -> str:
    """SHA-256 (hex) of a specimen's atomic numbers, positions (rounded to 1e-6 Å) and cell:
    the identity of the specimen in the provenance graph."""
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype="<i8").tobytes())
    digest.update(np.round(np.asarray(atoms.positions, dtype=float), 6).astype("<f8").tobytes())
    digest.update(np.round(np.asarray(atoms.cell, dtype=float), 6).astype("<f8").tobytes())
    return digest.hexdigest()
