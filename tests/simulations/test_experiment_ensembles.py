"""Ensembles share the specimen's scattering: every member of a STEM ensemble equals abTEM's
own reduction of one PRISM S-matrix with that member's CTF, every member of an HRTEM ensemble
equals abTEM's CTF applied to one exit wave; the spread grows with the uncertainty and a seed
reproduces the arrays."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import abtem
import numpy as np
import pytest

from simulations import (
    ExperimentResult,
    ExperimentSpecV1,
    build_specimen,
    resolve_state,
    run_experiment,
)

ENERGY = 200e3
SPECIMEN = {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 2}}
GPTS = 80  # 3.905 Å at 0.05 Å, rounded up to 7-smooth
CONFIG = {"diagnostics.progress_bar": False, "device": "cpu", "precision": "float64"}
DETECTORS = [
    {"name": "haadf", "inner": 60.0, "outer": 150.0},
    {"kind": "segmented", "name": "dpc", "inner": 5.0, "outer": 20.0, "rotation": 0.3},
]


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with abtem.config.set(CONFIG):
        yield


def experiment(mode: dict[str, Any], **fields: Any) -> ExperimentResult:
    spec = ExperimentSpecV1.model_validate(
        {
            "state": {
                "energy": ENERGY,
                "convergence_semiangle": 20.0,
                "aberrations": {"C10": -20.0, "C12": 15.0, "phi12": 0.7, "C30": 2e4},
            },
            "specimen": SPECIMEN,
            "mode": mode,
            "sampling": 0.05,
            **fields,
        }
    )
    return run_experiment(spec, resolve_state(spec, None))


def potential(configurations: int = 1, seed: int = 0) -> abtem.Potential:
    atoms: Any = build_specimen(SPECIMEN["name"], SPECIMEN["parameters"])
    if configurations > 1:
        atoms = abtem.FrozenPhonons(atoms, num_configs=configurations, sigmas=0.1, seed=seed)
    return abtem.Potential(atoms, gpts=GPTS, slice_thickness=2.0, projection="infinite")


STEM = {"mode": "stem", "detectors": DETECTORS, "scan": {"sampling": 0.5}}


def test_stem_members_are_abtems_reduction_of_one_s_matrix() -> None:
    # Defocus and astigmatism vary (terms that depend on the azimuth too); two phonon
    # configurations; an annular and a segmented detector.
    result = experiment(
        STEM,
        ensemble_size=3,
        uncertainty={"std": {"defocus": 30.0, "C12": 10.0, "phi12": 0.5}},
        frozen_phonons={"configurations": 2},
        seed=4,
    )
    members = result.parameters["members"]
    assert len(members) == 3 and len({m["phi12"] for m in members}) == 3
    s_matrix = abtem.SMatrix(
        potential=potential(2, seed=4),
        energy=ENERGY,
        semiangle_cutoff=20.0,
        interpolation=1,
        downsample=False,
    ).build(lazy=False)
    scan = abtem.GridScan(start=(0, 0), end=(3.905, 3.905), sampling=0.5)
    haadf = abtem.AnnularDetector(inner=60.0, outer=150.0)
    dpc = abtem.SegmentedDetector(
        nbins_radial=1, nbins_azimuthal=4, inner=5.0, outer=20.0, rotation=0.3
    )
    for i, aberrations in enumerate(members):
        ctf = abtem.CTF(energy=ENERGY, semiangle_cutoff=20.0, aberration_coefficients=aberrations)
        measured = s_matrix.reduce(scan=scan, ctf=ctf, detectors=[haadf, dpc])
        expected = np.asarray(measured[0].compute().array)
        np.testing.assert_allclose(
            result.arrays["haadf_members"][i], expected, rtol=1e-10, atol=1e-14
        )
        segments = np.asarray(measured[1].compute().array).reshape(8, 8, 4)
        for k in range(4):
            np.testing.assert_allclose(
                result.arrays[f"dpc_segment{k}_members"][i],
                segments[..., k],
                rtol=1e-10,
                atol=1e-14,
            )
    # The four segments of each member sum to the annulus they cover.
    ring = result.arrays["dpc_segment0_members"] * 0
    for k in range(4):
        ring = ring + result.arrays[f"dpc_segment{k}_members"]
    annulus = s_matrix.reduce(
        scan=scan,
        ctf=abtem.CTF(energy=ENERGY, semiangle_cutoff=20.0, aberration_coefficients=members[0]),
        detectors=abtem.AnnularDetector(inner=5.0, outer=20.0),
    )
    np.testing.assert_allclose(ring[0], annulus.compute().array, rtol=1e-10)


def test_segments_with_phonon_configurations_sum_to_their_annulus() -> None:
    # One state (Probe.scan), two phonon configurations: the four segments of the
    # segmented detector cover the annulus of an annular detector with the same angles.
    detectors = [*DETECTORS, {"name": "ring", "inner": 5.0, "outer": 20.0}]
    result = experiment(
        {**STEM, "detectors": detectors}, frozen_phonons={"configurations": 2}, seed=2
    )
    ring = sum(result.arrays[f"dpc_segment{k}"] for k in range(4))
    assert ring.shape == (8, 8)
    np.testing.assert_allclose(ring, result.arrays["ring"], rtol=1e-10)
    assert result.arrays["dpc_dpc_x"].std() > 0


def test_hrtem_members_are_abtems_ctf_on_one_exit_wave() -> None:
    # Only defocus varies (phases evaluated once per distinct angle), then astigmatism too.
    for uncertainty in ({"defocus": 30.0}, {"defocus": 30.0, "C12": 10.0, "phi12": 0.5}):
        result = experiment(
            {"mode": "hrtem"},
            ensemble_size=3,
            uncertainty={"std": uncertainty},
            overrides={"energy_spread": 0.6, "chromatic_aberration": 1.4e7},
            seed=8,
        )
        exit_wave = abtem.PlaneWave(energy=ENERGY).multislice(potential()).compute()
        spread = result.parameters["focal_spread"]
        assert spread > 0
        for i, aberrations in enumerate(result.parameters["members"]):
            ctf = abtem.CTF(energy=ENERGY, aberration_coefficients=aberrations, focal_spread=spread)
            expected = exit_wave.apply_ctf(ctf).intensity().compute().array
            np.testing.assert_allclose(
                result.arrays["image_members"][i], expected, rtol=1e-10, atol=1e-12
            )


def test_stem_spread_grows_with_the_defocus_uncertainty_and_the_seed_reproduces() -> None:
    def ensemble(std: float, seed: int) -> dict[str, np.ndarray]:
        return experiment(
            STEM, ensemble_size=4, uncertainty={"std": {"defocus": std}}, seed=seed
        ).arrays

    spreads = [float(ensemble(std, 3)["haadf_std"].mean()) for std in (5.0, 20.0, 80.0)]
    assert 0 < spreads[0] < spreads[1] < spreads[2]
    first, again = ensemble(20.0, 5), ensemble(20.0, 5)
    assert first.keys() == again.keys()
    for name in first:
        assert np.array_equal(first[name], again[name]), name
    assert not np.array_equal(first["haadf_members"], ensemble(20.0, 6)["haadf_members"])
