"""Built-in specimens, user structures (CIF, XYZ, extended XYZ, POSCAR) and their limits."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from simulations import (
    BUILTIN_SPECIMENS,
    SimulationError,
    SpecimenError,
    SpecimenLimitError,
    SpecimenLimits,
    build_specimen,
    read_structure,
    structure_hash,
)


@pytest.mark.parametrize("name", sorted(BUILTIN_SPECIMENS))
def test_every_builtin_specimen_has_an_orthogonal_cell_along_the_beam(name: str) -> None:
    atoms = build_specimen(name)
    cell = np.asarray(atoms.cell)
    assert np.allclose(cell, np.diag(np.diag(cell)), atol=1e-6)
    assert len(atoms) > 0
    scaled = atoms.get_scaled_positions(wrap=False)
    assert scaled.min() >= -1e-9 and scaled.max() <= 1 + 1e-9


def test_builtin_specimens_have_the_expected_composition() -> None:
    sto = build_specimen("srtio3-001", {"repeats": 2, "layers": 3})
    symbols = sto.get_chemical_symbols()
    assert (symbols.count("Sr"), symbols.count("Ti"), symbols.count("O")) == (12, 12, 36)
    assert len(sto) == 5 * 2 * 2 * 3
    assert sto.cell.lengths() == pytest.approx([7.81, 7.81, 11.715])
    si = build_specimen("si-110", {"layers": 2})
    # [110]: a = 5.431 Å along [001], a sqrt(2) along [1-10] (the rectangular cell), and
    # a / sqrt(2) per layer along the beam.
    assert sorted(si.cell.lengths()[:2]) == pytest.approx([5.431, 5.431 * np.sqrt(2)])
    assert si.cell.lengths()[2] == pytest.approx(2 * 5.431 / np.sqrt(2))
    mos2 = build_specimen("mos2-monolayer", {"repeats": 2, "dopants": 2, "vacancies": 1})
    symbols = mos2.get_chemical_symbols()
    assert symbols.count("W") == 2
    assert symbols.count("Mo") + 2 == symbols.count("S") // 2 + 1  # 8 metal sites, 15 S
    au = build_specimen("au-on-carbon", {"particle_size": 3, "extent": 20.0})
    assert {"Au", "C"} == set(au.get_chemical_symbols())
    carbon = build_specimen("amorphous-carbon", {"extent": 20.0, "thickness": 5.0, "seed": 3})
    assert len(carbon) == int(0.1 * 20 * 20 * 5)
    again = build_specimen("amorphous-carbon", {"extent": 20.0, "thickness": 5.0, "seed": 3})
    assert structure_hash(carbon) == structure_hash(again)
    other = build_specimen("amorphous-carbon", {"extent": 20.0, "thickness": 5.0, "seed": 4})
    assert structure_hash(carbon) != structure_hash(other)


@pytest.mark.parametrize(
    ("name", "parameters", "message"),
    [
        ("graphene", {}, "unknown specimen 'graphene'"),
        ("srtio3-001", {"size": 3}, "has no parameter ['size']"),
        ("srtio3-001", {"repeats": 0}, "repeats must be an integer"),
        ("mos2-monolayer", {"dopant": "Xx"}, "unknown element 'Xx'"),
        ("mos2-monolayer", {"repeats": 1, "dopants": 9}, "do not fit"),
        ("amorphous-carbon", {"thickness": -1.0}, "thickness must be a positive number"),
    ],
)
def test_bad_builtin_parameters_are_refused_clearly(
    name: str, parameters: dict, message: str
) -> None:
    with pytest.raises(SpecimenError) as caught:
        build_specimen(name, parameters)
    assert message in str(caught.value)
    assert isinstance(caught.value, SimulationError | ValueError)


def test_limits_refuse_large_specimens_before_building_them() -> None:
    limits = SpecimenLimits(max_atoms=1000, max_extent=50.0, max_thickness=30.0)
    with pytest.raises(SpecimenLimitError, match=r"about 20000000 atoms, over the limit of 1000"):
        build_specimen("srtio3-001", {"repeats": 1000, "layers": 4}, limits=limits)
    with pytest.raises(SpecimenLimitError, match=r"60\.0 Å cell, over the limits \(1000 atoms"):
        build_specimen("amorphous-carbon", {"extent": 60.0, "density": 0.001}, limits=limits)
    with pytest.raises(SpecimenLimitError, match=r"thick, over the limit of 30\.0 Å"):
        build_specimen("srtio3-001", {"layers": 10}, limits=limits)


def _text(atoms: object, format: str) -> str:
    if format == "cif":  # ase's CIF writer wants a binary file, the others a text file
        binary = io.BytesIO()
        write(binary, atoms, format=format)
        return binary.getvalue().decode()
    buffer = io.StringIO()
    write(buffer, atoms, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("format", "ase_format"),
    [("cif", "cif"), ("extxyz", "extxyz"), ("poscar", "vasp"), ("xyz", "xyz")],
)
def test_user_structures_are_read_tiled_and_limited(format: str, ase_format: str) -> None:
    gold = bulk("Au", "fcc", a=4.08, cubic=True)
    atoms = read_structure(_text(gold, ase_format), format=format, tiling=(2, 2, 3))
    assert len(atoms) == 4 * 12
    assert sorted(set(atoms.get_chemical_symbols())) == ["Au"]
    if format != "xyz":  # a plain XYZ file carries no cell
        assert atoms.cell.lengths() == pytest.approx([8.16, 8.16, 12.24], abs=1e-3)
    with pytest.raises(SpecimenLimitError, match="48 atoms, over the limit of 10"):
        read_structure(
            _text(gold, ase_format),
            format=format,
            tiling=(2, 2, 3),
            limits=SpecimenLimits(max_atoms=10),
        )


def test_a_user_structure_is_oriented_along_the_zone_axis() -> None:
    si = bulk("Si", "diamond", a=5.431, cubic=True)
    oriented = read_structure(_text(si, "cif"), format="cif", zone_axis=(1, 1, 0), layers=2)
    reference = build_specimen("si-110", {"layers": 2})
    assert len(oriented) == len(reference)
    assert sorted(oriented.cell.lengths()) == pytest.approx(sorted(reference.cell.lengths()))


@pytest.mark.parametrize(
    ("text", "format", "message"),
    [
        ("2\n\nC 0 0 0\nQq 1 0 0\n", "xyz", "cannot read the xyz structure"),
        ("this is not a cif file", "cif", "cannot read the cif structure"),
        ("", "poscar", "cannot read the poscar structure"),
        ("1\n\nC 0 0 0\n", "pdb", "unknown structure format 'pdb'"),
    ],
)
def test_unreadable_structures_are_refused_clearly(text: str, format: str, message: str) -> None:
    with pytest.raises(SpecimenError, match=re.escape(message)):
        read_structure(text, format=format)
