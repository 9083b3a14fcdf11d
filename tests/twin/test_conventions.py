"""Conversions between abTEM's optics conventions, Nion Swift and Thermo Fisher Velox."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from twin import (
    ABERRATION_TERMS,
    CONVENTIONS,
    POLAR_ALIASES,
    POLAR_SYMBOLS,
    Aberrations,
    ConventionError,
    TwinError,
    aberration_function,
    abtem_to_nion,
    abtem_to_velox,
    cartesian_to_polar,
    energy2wavelength,
    nion_to_abtem,
    polar_to_cartesian,
    scherzer_defocus,
    velox_to_abtem,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "optics.md"


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


def random_nion(rng: np.random.Generator) -> dict[str, float]:
    """Nion-style metadata: SI values, every Cartesian aberration up to 5th order."""
    nion = {
        "EHT": float(rng.uniform(20e3, 300e3)),
        "probe_ha": float(rng.uniform(0.005, 0.04)),
    }
    for n, _, magnitude, angle in ABERRATION_TERMS:
        size = 10.0 ** rng.uniform(-9, -2 + n - 5)  # nm (defocus) .. mm (C5) [m]
        if angle is None:
            nion[magnitude] = float(rng.uniform(-1, 1) * size)
        else:
            nion[f"{magnitude}.a"] = float(rng.uniform(-1, 1) * size)
            nion[f"{magnitude}.b"] = float(rng.uniform(-1, 1) * size)
    return nion


def random_polar(rng: np.random.Generator) -> dict[str, float]:
    polar = {
        "energy": float(rng.uniform(20e3, 300e3)),
        "semiangle_cutoff": float(rng.uniform(5, 40)),
    }
    for _, _, magnitude, angle in ABERRATION_TERMS:
        polar[magnitude] = float(rng.uniform(-1, 1) * 10 ** rng.uniform(0, 6))  # [Å]
        if angle is not None:
            polar[angle] = float(rng.uniform(-math.pi, math.pi))
    return polar


def nion_chi(
    nion: dict[str, float], theta_x: np.ndarray, theta_y: np.ndarray, wavelength_m: float
) -> np.ndarray:
    """chi [rad] as Nion's own probe simulator writes it (nionswift-usim's
    AberrationsController): each Cartesian coefficient [m] times a polynomial in the
    Cartesian angles, explicit up to third order; higher orders through Re/Im of
    (theta_x + i theta_y)^m |theta|^(n+1-m) / (n+1)."""
    a, b = theta_x, theta_y
    r2 = a**2 + b**2
    explicit = {
        "C10": r2 / 2,
        "C12.a": (a**2 - b**2) / 2,
        "C12.b": a * b,
        "C21.a": a * r2 / 3,
        "C21.b": b * r2 / 3,
        "C23.a": a * (a**2 - 3 * b**2) / 3,
        "C23.b": b * (3 * a**2 - b**2) / 3,
        "C30": r2**2 / 4,
        "C32.a": r2 * (a**2 - b**2) / 4,
        "C32.b": r2 * a * b / 2,
        "C34.a": (a**4 - 6 * a**2 * b**2 + b**4) / 4,
        "C34.b": a**3 * b - a * b**3,
    }
    omega = a + 1j * b
    chi = np.zeros_like(a)
    for key, value in nion.items():
        if key in explicit:
            chi = chi + value * explicit[key]
            continue
        if not key.startswith("C"):
            continue
        n, m = int(key[1]), int(key[2])
        if n <= 3:
            raise AssertionError(f"{key} missing from the explicit table")
        polynomial = omega**m * np.abs(omega) ** (n + 1 - m) / (n + 1)
        chi = chi + value * (polynomial.imag if key.endswith(".b") else polynomial.real)
    return 2 * np.pi / wavelength_m * chi


def assert_same_cartesian(actual: dict[str, float], expected: dict[str, float]) -> None:
    """Equal key sets and values to 1e-12 of each term's magnitude hypot(a, b): a component
    near zero carries the rounding of its partner."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if key[:3] in ("C10", "C30", "C50") or not key.startswith("C"):
            assert actual[key] == pytest.approx(value, rel=1e-12), key
            continue
        size = math.hypot(expected[key[:3] + ".a"], expected[key[:3] + ".b"])
        assert abs(actual[key] - value) <= 1e-12 * size, key


# --- the table ---------------------------------------------------------------------------------


def test_table_covers_every_quantity_once() -> None:
    assert [row.abtem for row in CONVENTIONS[:3]] == [
        "energy",
        "semiangle_cutoff",
        "C10 (defocus = -C10)",
    ]
    nion_names = [name for row in CONVENTIONS for name in row.nion.split(", ")]
    assert len(nion_names) == len(set(nion_names))
    expected = {"EHT", "probe_ha"} | {
        f"{c}.{part}" if p else c for _, _, c, p in ABERRATION_TERMS for part in "ab"
    }
    assert set(nion_names) == expected
    assert {row.velox for row in CONVENTIONS} - {""} == {
        "Optics.AccelerationVoltage",
        "Optics.Defocus",
        "Optics.BeamConvergence",
    }
    for row in CONVENTIONS:
        for name in row.abtem.replace("(", ",").replace(")", "").split(","):
            word = name.strip().split(" ")[0]
            if word and word not in ("alias", "defocus", "energy", "semiangle_cutoff"):
                assert word in POLAR_SYMBOLS or word in POLAR_ALIASES, word


def test_documentation_lists_every_name() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for row in CONVENTIONS:
        for name in (*row.nion.split(", "), row.velox):
            if name:
                assert f"`{name}`" in text, f"{name} missing from {DOCS.name}"


# --- polar <-> Cartesian -------------------------------------------------------------------------


def test_cartesian_components_are_c_cos_and_c_sin() -> None:
    cartesian = polar_to_cartesian({"C10": -5.0, "C12": 2.0, "phi12": 0.25, "C23": 3.0})
    assert cartesian == {
        "C10": -5.0,
        "C12.a": pytest.approx(2.0 * math.cos(0.5)),
        "C12.b": pytest.approx(2.0 * math.sin(0.5)),
        "C23.a": 3.0,
        "C23.b": 0.0,
    }
    polar = cartesian_to_polar({"C12.a": 0.0, "C12.b": -2.0, "C21.x": 1.0, "C21.y": 1.0})
    assert polar == {
        "C12": 2.0,
        "phi12": pytest.approx(-math.pi / 4),
        "C21": pytest.approx(math.sqrt(2)),
        "phi21": pytest.approx(math.pi / 4),
    }


def test_cartesian_polar_cartesian_round_trip() -> None:
    rng = np.random.default_rng(21)
    for _ in range(50):
        cartesian = {k: v for k, v in random_nion(rng).items() if k.startswith("C")}
        assert_same_cartesian(polar_to_cartesian(cartesian_to_polar(cartesian)), cartesian)


def test_polar_cartesian_polar_round_trip_is_the_same_aberration() -> None:
    rng = np.random.default_rng(22)
    alpha = jnp.linspace(0, 0.03, 7)[:, None] * jnp.ones(9)
    phi = jnp.ones(7)[:, None] * jnp.linspace(-math.pi, math.pi, 9)
    for _ in range(50):
        polar = {k: v for k, v in random_polar(rng).items() if k in POLAR_SYMBOLS}
        back = cartesian_to_polar(polar_to_cartesian(polar))
        for _, m, magnitude, angle in ABERRATION_TERMS:
            if angle is None:
                assert back[magnitude] == polar[magnitude]
                continue
            # A negative magnitude comes back positive, its azimuth turned by pi/m.
            assert back[magnitude] == pytest.approx(abs(polar[magnitude]), rel=1e-12)
            turn = 0.0 if polar[magnitude] >= 0 else math.pi / m
            difference = (back[angle] - polar[angle] - turn) * m / (2 * math.pi)
            assert difference == pytest.approx(round(difference), abs=1e-9)
        chi = aberration_function(alpha, phi, 0.02, Aberrations(**polar))
        chi_back = aberration_function(alpha, phi, 0.02, Aberrations(**back))
        np.testing.assert_allclose(chi_back, chi, rtol=1e-9, atol=1e-9 * float(jnp.abs(chi).max()))


# --- Nion Swift ---------------------------------------------------------------------------------


def test_nion_chi_equals_abtem_chi() -> None:
    """The sign and basis of Nion's coefficients: Nion's chi, written Nion's way from the SI
    Cartesian values, equals the twin's chi from the converted polar values."""
    rng = np.random.default_rng(5)
    theta_x, theta_y = np.meshgrid(np.linspace(-0.03, 0.03, 13), np.linspace(-0.025, 0.03, 11))
    for _ in range(10):
        nion = random_nion(rng)
        params = nion_to_abtem(nion)
        wavelength = float(energy2wavelength(params.pop("energy")))  # [Å]
        params.pop("semiangle_cutoff")
        expected = nion_chi(nion, theta_x, theta_y, wavelength * 1e-10)
        chi = aberration_function(
            np.hypot(theta_x, theta_y),
            np.arctan2(theta_y, theta_x),
            wavelength,
            Aberrations(**params),
        )
        np.testing.assert_allclose(chi, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_nion_defocus_has_abtem_sign() -> None:
    # Nion C10 = -50 nm (an underfocus: C10 < 0) is abTEM C10 = -500 Å, defocus = +500 Å.
    params = nion_to_abtem({"C10": -50e-9, "EHT": 60e3, "probe_ha": 0.031})
    assert params == {
        "C10": pytest.approx(-500.0, rel=1e-12),
        "energy": 60e3,
        "semiangle_cutoff": pytest.approx(31.0, rel=1e-12),
    }
    assert float(Aberrations(C10=params["C10"]).defocus) == pytest.approx(500.0)
    # abTEM's Scherzer defocus for Cs = 1.2 mm at 60 kV, written for Nion, is negative.
    defocus = float(scherzer_defocus(1.2e7, 60e3))
    assert abtem_to_nion({"defocus": defocus, "Cs": 1.2e7})["C10"] == pytest.approx(
        -defocus * 1e-10
    )


def test_nion_spellings_prefixes_and_strings() -> None:
    ab = {"C12.a": 1e-9, "C12.b": -2e-9, "C30": 1.5e-3, "EHT": 100e3}
    xy = {"C12.x": "1e-9", "C12.y": -2e-9, "C30": "0.0015", "EHT": "100000"}
    scanned = {f"ImageScanned:{k}": v for k, v in ab.items()}
    noise = {"StageOutX": 1e-6, "C0.a": 1e-9, "C70": 1.0, "fov_nm": 16.0, "C1 ConstW": 0.2}
    reference = nion_to_abtem(ab)
    assert nion_to_abtem(xy) == reference
    assert nion_to_abtem(scanned) == reference
    assert nion_to_abtem({**ab, **noise}) == reference
    assert set(reference) == {"energy", "C12", "phi12", "C30"}
    assert abtem_to_nion(reference, spelling="xy").keys() == {"C12.x", "C12.y", "C30", "EHT"}


def test_nion_ambiguous_input_is_refused() -> None:
    with pytest.raises(ConventionError) as info:
        nion_to_abtem({"C12.a": 1e-9, "C12.x": 2e-9})
    assert isinstance(info.value, TwinError) and isinstance(info.value, ValueError)
    with pytest.raises(ConventionError):
        nion_to_abtem({"C10": 1e-9, "Scan:C10": 1e-9})
    with pytest.raises(ConventionError):
        nion_to_abtem({"C10": "about 5 nm"})
    with pytest.raises(ConventionError):
        nion_to_abtem({"C12": 1e-9})  # a two-fold term needs its component


def test_nion_abtem_round_trips() -> None:
    rng = np.random.default_rng(8)
    for _ in range(50):
        nion = random_nion(rng)
        assert_same_cartesian(abtem_to_nion(nion_to_abtem(nion)), nion)

        polar = random_polar(rng)
        again = nion_to_abtem(abtem_to_nion(polar))
        assert again.keys() == polar.keys()
        assert again["energy"] == pytest.approx(polar["energy"], rel=1e-15)
        assert again["semiangle_cutoff"] == pytest.approx(polar["semiangle_cutoff"], rel=1e-12)
        aberrations = {k: v for k, v in polar.items() if k in POLAR_SYMBOLS}
        assert_same_cartesian(
            polar_to_cartesian({k: again[k] for k in aberrations}),
            polar_to_cartesian(aberrations),
        )


# --- Thermo Fisher Velox ------------------------------------------------------------------------


def test_velox_defocus_sign() -> None:
    # Assumed Thermo Fisher sign: Optics.Defocus < 0 is an underfocus (= C10 < 0), so a
    # Velox defocus of -60 nm is abTEM's defocus +600 Å.
    params = velox_to_abtem({"Optics.Defocus": -60e-9})
    assert params == {"C10": pytest.approx(-600.0, rel=1e-12)}
    assert float(Aberrations.from_dict(params).defocus) == pytest.approx(600.0, rel=1e-12)
    # abTEM's (positive) Scherzer defocus for a positive Cs is quoted negative in Velox.
    defocus = float(scherzer_defocus(1.0e7, 300e3))
    assert abtem_to_velox({"defocus": defocus})["Optics.Defocus"] == pytest.approx(-defocus * 1e-10)


def test_velox_nested_and_string_values() -> None:
    nested = {
        "Optics": {
            "AccelerationVoltage": "200000",
            "Defocus": "-1.5e-08",
            "BeamConvergence": "0.0215",
            "SpotIndex": "3",
        },
        "Stage": {"Position": {"x": "1e-6"}},
    }
    assert velox_to_abtem(nested) == {
        "energy": 200e3,
        "C10": pytest.approx(-150.0, rel=1e-12),
        "semiangle_cutoff": pytest.approx(21.5, rel=1e-12),
    }
    with pytest.raises(ConventionError):
        velox_to_abtem({"Optics": {"AccelerationVoltage": ""}})


def test_velox_abtem_round_trips() -> None:
    rng = np.random.default_rng(13)
    for _ in range(50):
        velox = {
            "Optics.AccelerationVoltage": float(rng.uniform(30e3, 300e3)),
            "Optics.Defocus": float(rng.uniform(-2e-6, 2e-6)),
            "Optics.BeamConvergence": float(rng.uniform(1e-3, 4e-2)),
        }
        back = abtem_to_velox(velox_to_abtem(velox))
        assert back == pytest.approx(velox, rel=1e-12)

        polar = random_polar(rng)
        again = velox_to_abtem(abtem_to_velox(polar))
        assert again == pytest.approx(
            {k: polar[k] for k in ("energy", "C10", "semiangle_cutoff")}, rel=1e-12
        )


def test_nion_to_velox_through_abtem_and_back() -> None:
    rng = np.random.default_rng(34)
    for _ in range(50):
        nion = random_nion(rng)
        velox = abtem_to_velox(nion_to_abtem(nion))
        assert velox["Optics.AccelerationVoltage"] == nion["EHT"]
        assert velox["Optics.Defocus"] == pytest.approx(nion["C10"], rel=1e-12)
        assert velox["Optics.BeamConvergence"] == pytest.approx(nion["probe_ha"], rel=1e-12)
        back = abtem_to_nion(velox_to_abtem(velox))
        assert back == pytest.approx({k: nion[k] for k in ("EHT", "C10", "probe_ha")}, rel=1e-12)


def _velox_metadata(path: Path) -> dict:
    """The metadata JSON of a Velox EMD file, found in its raw bytes (no HDF5 reader)."""
    data = path.read_bytes()
    decoder = json.JSONDecoder()
    start = data.find(b'"Optics"')
    while start > 0:
        start = data.rfind(b"{", 0, start)
        try:
            candidate, _ = decoder.raw_decode(data[start : start + 200_000].decode("latin-1"))
        except json.JSONDecodeError:
            continue
        if isinstance(candidate, dict) and "Optics" in candidate:
            return candidate
    pytest.skip(f"no Velox metadata JSON found in {path.name}")


def test_real_velox_file(realdata: Path) -> None:
    path = realdata / "fei_example_tem_stack.emd"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    params = velox_to_abtem(_velox_metadata(path))
    # A Titan at 300 kV, Defocus 30.2 nm (an overfocus under the Thermo sign), 11.4 mrad.
    assert params["energy"] == 300e3
    assert params["C10"] == pytest.approx(302.31699205257632, rel=1e-12)
    assert params["semiangle_cutoff"] == pytest.approx(11.411208809441558, rel=1e-12)
