"""Physics a virtual experiment must show (Z-contrast, CBED disk, Thon rings where the twin
puts them), ensembles over the state's uncertainty, doses, and the limits."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from simulations import (
    ExperimentLimits,
    ExperimentSpecV1,
    ExperimentTooLarge,
    StateV1,
    estimate_experiment,
    resolve_state,
    run_experiment,
)
from twin import ctf_zeros, energy2wavelength, fit_thon_rings

STATE = {"energy": 200e3, "convergence_semiangle": 20.0, "aberrations": {"C10": -20.0}}


def spec(**fields: Any) -> ExperimentSpecV1:
    document = {
        "state": STATE,
        "specimen": {"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 2}},
        "sampling": 0.05,
        **fields,
    }
    return ExperimentSpecV1.model_validate(document)


def run(experiment: ExperimentSpecV1) -> dict[str, np.ndarray]:
    return run_experiment(experiment, resolve_state(experiment, None)).arrays


def test_haadf_shows_sr_columns_brighter_than_ti_o_columns() -> None:
    experiment = spec(
        specimen={"name": "srtio3-001", "parameters": {"repeats": 1, "layers": 4}},
        state={**STATE, "aberrations": {}},
        mode={
            "mode": "stem",
            "detectors": [{"name": "haadf", "inner": 70.0, "outer": 160.0}],
            "scan": {"sampling": 3.905 / 8},
        },
    )
    haadf = run(experiment)["haadf"]
    assert haadf.shape == (8, 8)
    sr, ti_o, oxygen = haadf[0, 0], haadf[4, 4], haadf[4, 0]  # Sr (Z=38), Ti-O (22+8), O
    assert sr > 1.3 * ti_o > 1.3 * oxygen
    assert haadf.argmax() == 0  # the brightest pixel is the Sr column


def test_cbed_disk_radius_is_the_convergence_semiangle_within_a_pixel() -> None:
    experiment = spec(
        specimen={"name": "amorphous-carbon", "parameters": {"extent": 40.0, "thickness": 4.0}},
        state={**STATE, "convergence_semiangle": 15.0},
        mode={"mode": "cbed", "max_angle": 40.0},
        sampling=0.1,
    )
    pattern = run(experiment)["pattern"]
    pixel = 1e3 * float(energy2wavelength(200e3)) / 40.0  # [mrad] per pixel
    inside = pattern > 0.5 * np.median(pattern[pattern > 0.1 * pattern.max()])
    radius = math.sqrt(inside.sum() / math.pi) * pixel
    assert abs(radius - 15.0) < pixel, (radius, pixel)


@pytest.fixture(scope="module")
def carbon_hrtem() -> np.ndarray:
    """A virtual HRTEM image of 384 x 384 x 10 Å of amorphous carbon (147 456 atoms), 700 Å
    underfocus, Cs 1.2 mm, 200 kV, 0.5 Å pixels (a few seconds)."""
    experiment = ExperimentSpecV1.model_validate(
        {
            "state": {
                "energy": 200e3,
                "convergence_semiangle": 1.0,
                "aberrations": {"C10": -700.0, "C30": 1.2e7},
            },
            "specimen": {
                "name": "amorphous-carbon",
                "parameters": {"extent": 384.0, "thickness": 10.0, "seed": 11},
            },
            "mode": {"mode": "hrtem"},
            "sampling": 0.5,
            "slice_thickness": 10.0,
        }
    )
    return run(experiment)["image"]


def test_hrtem_diffractogram_zeros_are_where_the_twin_puts_them(
    carbon_hrtem: np.ndarray,
) -> None:
    # One slice of 10 Å: the exit plane lies 10 Å beyond the projected potential, which the
    # CTF's defocus counts from.
    defocus = 700.0 - 10.0
    n = carbon_hrtem.shape[0]
    spectrum = np.abs(np.fft.fft2(carbon_hrtem - carbon_hrtem.mean())) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n, 0.5), np.fft.fftfreq(n, 0.5), indexing="ij"))
    width = 1 / (n * 0.5)
    zeros = np.asarray(ctf_zeros(200e3, defocus, 1.2e7, num_zeros=5)) / float(
        energy2wavelength(200e3)
    )

    def power(at: float) -> float:
        return float(spectrum[np.abs(k - at) < width].mean())

    for first, second in itertools.pairwise(zeros):
        maximum = math.sqrt((first**2 + second**2) / 2)  # sin² peaks midway in k²
        assert power(first) < 0.35 * power(maximum), (first, maximum)
        assert power(second) < 0.35 * power(maximum)


def test_the_twins_thon_fit_recovers_the_defocus_within_2_nm(carbon_hrtem: np.ndarray) -> None:
    fit = fit_thon_rings(
        carbon_hrtem,
        sampling=0.5,
        energy=200e3,
        Cs=1.2e7,
        tile_size=256,
        frequency_range=(1 / 30, 0.6),  # abTEM's anti-aliasing cut ends at 2/3 Nyquist
    )
    assert abs(fit.defocus - 700.0) < 20.0, fit.defocus
    assert fit.astigmatism < 20.0


def hrtem_ensemble(std: float, seed: int = 3, size: int = 6) -> dict[str, np.ndarray]:
    return run(
        spec(
            mode={"mode": "hrtem"},
            ensemble_size=size,
            seed=seed,
            uncertainty={"std": {"defocus": std}} if std else {"std": {}},
        )
    )


def test_zero_uncertainty_gives_identical_members() -> None:
    arrays = hrtem_ensemble(0.0)
    members = arrays["image_members"]
    assert members.shape[0] == 6
    assert np.array_equal(members, np.broadcast_to(members[0], members.shape))
    assert np.all(arrays["image_std"] == 0)
    single = run(spec(mode={"mode": "hrtem"}))["image"]
    np.testing.assert_allclose(arrays["image"], single, rtol=1e-12)


def test_the_ensemble_spread_grows_with_the_defocus_uncertainty() -> None:
    spreads = [float(hrtem_ensemble(std)["image_std"].mean()) for std in (5.0, 20.0, 80.0)]
    assert 0 < spreads[0] < spreads[1] < spreads[2]


def test_the_same_seed_reproduces_the_same_arrays() -> None:
    first, again, other = hrtem_ensemble(20.0, seed=5), hrtem_ensemble(20.0, seed=5), None
    assert first.keys() == again.keys()
    for name in first:
        assert np.array_equal(first[name], again[name]), name
    other = hrtem_ensemble(20.0, seed=6)
    assert not np.array_equal(first["image_members"], other["image_members"])


def test_a_stem_ensemble_shares_one_s_matrix_and_matches_the_single_run() -> None:
    mode = {
        "mode": "stem",
        "detectors": [{"name": "haadf", "inner": 60.0, "outer": 150.0}],
        "scan": {"sampling": 0.5},
    }
    single = run(spec(mode=mode))["haadf"]
    flat = run(spec(mode=mode, ensemble_size=3))
    np.testing.assert_allclose(flat["haadf"], single, rtol=1e-5)
    assert np.all(flat["haadf_std"] < 1e-6 * single.max())
    spread = run(spec(mode=mode, ensemble_size=4, uncertainty={"std": {"defocus": 30.0}}))
    assert spread["haadf_std"].max() > 1e-3 * single.max()
    assert spread["haadf_members"].shape == (4, *single.shape)


def test_doses_give_seeded_poisson_counts_around_the_noise_free_image() -> None:
    experiment = spec(mode={"mode": "hrtem"}, doses=[100.0, 1e6], seed=9)
    arrays = run(experiment)
    pixel_area = (3.905 / 80) ** 2
    for i, dose in enumerate((100.0, 1e6)):
        counts = arrays[f"image_dose{i}"]
        assert np.all(counts == np.round(counts)) and counts.min() >= 0
        expected = arrays["image"] * dose * pixel_area
        assert counts.sum() == pytest.approx(expected.sum(), rel=5 / math.sqrt(expected.sum()))
    assert np.array_equal(arrays["image_dose0"], run(experiment)["image_dose0"])


def test_the_dose_follows_from_probe_current_dwell_time_and_step() -> None:
    state = StateV1(energy=200e3, convergence_semiangle=20.0, probe_current=16e-12, dwell_time=1e-5)
    experiment = spec(
        state=state.model_dump(),
        mode={
            "mode": "stem",
            "detectors": [{"name": "bf", "inner": 0.0, "outer": 10.0}],
            "scan": {"sampling": 0.5},
        },
    )
    result = run_experiment(experiment, resolve_state(experiment, None))
    electrons = 16e-12 * 1e-5 / 1.602176634e-19  # ~1000 per probe position
    assert result.parameters["doses"] == [pytest.approx(electrons / 0.25)]
    assert result.arrays["bf_dose0"].mean() == pytest.approx(
        result.arrays["bf"].mean() * electrons, rel=0.05
    )


def test_experiments_over_the_limits_are_refused_with_the_estimate() -> None:
    big = spec(
        mode={
            "mode": "stem",
            "detectors": [{"name": "haadf", "inner": 70.0, "outer": 160.0}],
            "scan": {"sampling": 0.01},
        },
        ensemble_size=64,
    )
    limits = ExperimentLimits(max_positions=10_000, max_members=16)
    with pytest.raises(ExperimentTooLarge) as caught:
        run_experiment(big, resolve_state(big, None), limits=limits)
    message = str(caught.value)
    assert "152881 probe positions > 10000" in message
    assert "ensemble of 64 > 16" in message
    assert "estimated" in message and "MiB" in message
    small = estimate_experiment(spec(mode={"mode": "hrtem"}))
    assert small.positions == 0 and small.gpts == (80, 80) and small.seconds < 1
