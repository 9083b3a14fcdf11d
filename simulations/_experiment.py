"""Running a virtual experiment: the specimen's scattering computed once, an ensemble of
states over the twin's uncertainty sharing it, and Poisson realisations per dose.

:func:`run_experiment` is pure computation: a validated spec and the state to use in, an
:class:`ExperimentResult` (named arrays, their axes, the parameters used) out. The worker
does the reading, writing and scheduling around it.

What each mode computes (``docs/experiments.md`` has the details):

* ``stem``: one image per annular detector, four segment images and two DPC differences per
  segmented detector. One state: ``abtem.Probe.scan``; an ensemble: one PRISM S-matrix
  (``abtem.SMatrix``, interpolation 1), reduced with each member's CTF.
* ``4dstem``: the diffraction pattern at every probe position, the centre of mass
  (``com_x``, ``com_y`` [mrad]) and the virtual annular detectors' images; ensembles as STEM.
* ``hrtem``: one exit wave per phonon configuration, imaged with each member's CTF.
* ``cbed``: the diffraction pattern of the probe at one position (one multislice per member).
* ``diffraction``: the plane-wave diffraction pattern (no lens: no ensemble).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulations._cost import (
    CostEstimate,
    ExperimentLimits,
    estimate,
    smooth_gpts,
)
from simulations._experiment_spec import (
    ABERRATION_NAMES,
    BuiltinSpecimenV1,
    CbedModeV1,
    DiffractionModeV1,
    ExperimentSpecV1,
    FourDStemModeV1,
    HrtemModeV1,
    SegmentedDetectorV1,
    StateV1,
    StemModeV1,
    StructureSpecimenV1,
    UncertaintyV1,
)
from simulations._mapping import (
    ELEMENTARY_CHARGE,
    AbtemSetup,
    ExperimentInputError,
    dose_per_area,
    member_ctf,
    to_abtem,
)
from simulations._specimens import (
    SpecimenLimits,
    build_specimen,
    read_structure,
    structure_hash,
)

__all__ = [
    "ExperimentResult",
    "PreparedExperiment",
    "Progress",
    "draw_members",
    "estimate_experiment",
    "prepare_experiment",
    "run_experiment",
]

#: ``progress(fraction, stage)``: called as the run advances (fraction in [0, 1]); it may
#: raise to stop the run (a cancelled job).
Progress = Callable[[float, str], None]


@dataclass
class ExperimentResult:
    """Named arrays (float64), each with its axes (``dims``, ``sampling`` and ``units`` per
    axis), and the parameters the run used (state, abTEM parameters, doses, specimen hash)."""

    arrays: dict[str, np.ndarray]
    axes: dict[str, dict[str, list[Any]]]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedExperiment:
    """A spec made concrete: its specimen, potential grid and cost estimate."""

    atoms: Any
    gpts: tuple[int, int]
    slices: int
    structure_sha256: str
    estimate: CostEstimate


def _specimen(spec: ExperimentSpecV1, limits: SpecimenLimits) -> Any:
    specimen = spec.specimen
    if isinstance(specimen, BuiltinSpecimenV1):
        return build_specimen(specimen.name, specimen.parameters, limits=limits)
    assert isinstance(specimen, StructureSpecimenV1)
    return read_structure(
        specimen.content,
        format=specimen.format,
        tiling=specimen.tiling,
        zone_axis=specimen.zone_axis,
        layers=specimen.layers,
        limits=limits,
    )


def _wavelength(energy: float) -> float:
    """Relativistic electron wavelength [Å] of ``energy`` [eV] (abTEM's constants)."""
    from abtem.core.energy import energy2wavelength

    return float(energy2wavelength(energy))


def _scan_region(
    spec: ExperimentSpecV1, extent: tuple[float, float], state: StateV1 | None
) -> tuple[tuple[float, float], tuple[float, float], float]:
    mode = spec.mode
    assert isinstance(mode, StemModeV1 | FourDStemModeV1)
    start = mode.scan.start or (0.0, 0.0)
    end = mode.scan.end or extent
    if mode.scan.sampling is not None:
        step = mode.scan.sampling
    else:
        energy = state.energy if state is not None else 200e3
        alpha = (state.convergence_semiangle if state is not None else 20.0) * 1e-3
        step = _wavelength(energy) / (4 * alpha)  # Nyquist step of the probe, as abTEM
    if not (end[0] > start[0] and end[1] > start[1]):
        raise ExperimentInputError(f"the scan region {start}..{end} [Å] is empty")
    return start, end, step


def _positions(spec: ExperimentSpecV1, extent: tuple[float, float], state: StateV1 | None) -> int:
    if not isinstance(spec.mode, StemModeV1 | FourDStemModeV1):
        return 1 if isinstance(spec.mode, CbedModeV1) else 0
    start, end, step = _scan_region(spec, extent, state)
    nx = max(1, math.ceil((end[0] - start[0]) / step - 1e-9))
    ny = max(1, math.ceil((end[1] - start[1]) / step - 1e-9))
    return nx * ny


def prepare_experiment(
    spec: ExperimentSpecV1,
    state: StateV1 | None = None,
    *,
    limits: ExperimentLimits | None = None,
    specimen_limits: SpecimenLimits | None = None,
) -> PreparedExperiment:
    """Build the specimen and estimate the cost; refuse (``ExperimentTooLarge``, with the
    estimate in the message) what is over ``limits``. ``state`` sets the probe's Nyquist
    step when the scan gives none (200 kV, 20 mrad assumed without it)."""
    atoms = _specimen(spec, specimen_limits or SpecimenLimits())
    lengths = atoms.cell.lengths()
    extent = (float(lengths[0]), float(lengths[1]))
    gpts = (smooth_gpts(extent[0], spec.sampling), smooth_gpts(extent[1], spec.sampling))
    slices = max(1, math.ceil(float(lengths[2]) / spec.slice_thickness - 1e-9))
    members = spec.ensemble_size
    plane_waves = 0
    if members > 1 and isinstance(spec.mode, StemModeV1 | FourDStemModeV1):
        alpha = (state.convergence_semiangle if state is not None else 20.0) * 1e-3
        wavelength = _wavelength(state.energy if state is not None else 200e3)
        plane_waves = max(1, int(math.pi * (alpha / wavelength) ** 2 * extent[0] * extent[1]))
    detector_pixels = regions = 0
    if isinstance(spec.mode, FourDStemModeV1):
        detector_pixels = gpts[0] * gpts[1] // 4
    elif isinstance(spec.mode, StemModeV1) and plane_waves:
        regions = sum(
            d.segments if isinstance(d, SegmentedDetectorV1) else 1 for d in spec.mode.detectors
        )
    cost = estimate(
        gpts=gpts,
        slices=slices,
        positions=_positions(spec, extent, state),
        members=members,
        configurations=spec.frozen_phonons.configurations,
        plane_waves=plane_waves,
        detector_pixels=detector_pixels,
        detector_regions=regions,
    )
    (limits or ExperimentLimits()).check(cost)
    return PreparedExperiment(atoms, gpts, slices, structure_hash(atoms), cost)


def estimate_experiment(
    spec: ExperimentSpecV1, state: StateV1 | None = None, **kwargs: Any
) -> CostEstimate:
    """The cost estimate of :func:`prepare_experiment` alone."""
    return prepare_experiment(spec, state, **kwargs).estimate


def draw_members(
    state: StateV1, uncertainty: UncertaintyV1 | None, size: int, seed: int
) -> list[dict[str, float]]:
    """The aberrations [Å, rad] of ``size`` ensemble members drawn from a normal distribution
    around ``state``'s with ``uncertainty`` (standard deviations or a covariance; ``defocus``
    varies -C10), seeded. Only aberrations may vary: the specimen's scattering is shared, and
    the energy's spread enters through the focal spread."""
    base = {name: float(state.aberrations.get(name, 0.0)) for name in ABERRATION_NAMES}
    if size == 1:
        return [dict(state.aberrations)]
    names: list[str] = []
    covariance = np.zeros((0, 0))
    if uncertainty is not None:
        names = list(uncertainty.names) + [n for n in uncertainty.std if n not in uncertainty.names]
        covariance = np.zeros((len(names), len(names)))
        k = len(uncertainty.names)
        if k:
            covariance[:k, :k] = np.asarray(uncertainty.covariance, dtype=float)
        for i, name in enumerate(names[k:], start=k):
            covariance[i, i] = uncertainty.std[name] ** 2
    varying = [n for n in names if n not in ABERRATION_NAMES and n != "defocus"]
    if varying:
        raise ExperimentInputError(
            f"an ensemble can vary only aberrations (and defocus), not {varying}"
        )
    sign = np.array([-1.0 if n == "defocus" else 1.0 for n in names])
    keys = ["C10" if n == "defocus" else n for n in names]
    rng = np.random.default_rng([seed, 1])
    mean = np.array([base[k] for k in keys])
    if names and np.any(covariance):
        covariance = covariance * np.outer(sign, sign)
        draws = rng.multivariate_normal(mean, covariance, size=size, method="eigh")
    else:
        draws = np.tile(mean, (size, 1))
    members = []
    for row in draws:
        member = dict(state.aberrations)
        member.update({k: float(v) for k, v in zip(keys, row, strict=True)})
        members.append(member)
    return members


class _TaskProgress:
    """A dask callback reporting the finished share of a graph's tasks to ``progress``,
    mapped onto [low, high]."""

    def __init__(self, progress: Progress | None, low: float, high: float, stage: str) -> None:
        self.progress, self.low, self.high, self.stage = progress, low, high, stage

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        from dask.callbacks import Callback

        counts = {"done": 0, "total": 1}
        progress, low, high, stage = self.progress, self.low, self.high, self.stage

        def start_state(dsk: Any, state: Any) -> None:
            counts["total"] = max(1, len(dsk))

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            counts["done"] += 1
            progress(low + (high - low) * min(1.0, counts["done"] / counts["total"]), stage)

        with Callback(start_state=start_state, posttask=posttask):
            yield
        progress(high, stage)


def _potential(spec: ExperimentSpecV1, prepared: PreparedExperiment) -> Any:
    import abtem

    phonons = spec.frozen_phonons
    source: Any = prepared.atoms
    if phonons.configurations > 1:
        source = abtem.FrozenPhonons(
            prepared.atoms,
            num_configs=phonons.configurations,
            sigmas=phonons.sigma,
            seed=spec.seed,
        )
    return abtem.Potential(
        source,
        gpts=prepared.gpts,
        slice_thickness=spec.slice_thickness,
        projection="infinite",
    )


def _mean_leading(array: np.ndarray, ndim: int) -> np.ndarray:
    """Average the leading (ensemble) axes away, keeping the last ``ndim``."""
    array = np.asarray(array, dtype=float)
    while array.ndim > ndim:
        array = array.mean(axis=0)
    return array


def _blur(image: np.ndarray, source_size: float, step: float) -> np.ndarray:
    if source_size <= 0:
        return image
    # A periodic Gaussian blur, multiplied in Fourier space (the scan wraps like the cell).
    sigma = source_size / step
    kx = np.fft.fftfreq(image.shape[0])[:, None]
    ky = np.fft.fftfreq(image.shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (kx**2 + ky**2))
    return np.real(np.fft.ifft2(np.fft.fft2(image) * kernel))


def _stem_arrays(
    spec: ExperimentSpecV1, setup: AbtemSetup, measured: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Per-detector arrays from abTEM's measurements (numpy), one state."""
    assert isinstance(spec.mode, StemModeV1 | FourDStemModeV1)
    out: dict[str, np.ndarray] = {}
    if isinstance(spec.mode, StemModeV1):
        for detector in spec.mode.detectors:
            array = np.asarray(measured[detector.name], dtype=float)
            if isinstance(detector, SegmentedDetectorV1):
                # abTEM's (..., x, y, radial bins, azimuthal bins): the bins flattened, then
                # the leading (phonon configuration) axes averaged.
                segments = array.reshape(*array.shape[:-2], -1) if array.ndim >= 4 else array
                segments = _mean_leading(segments, 3)
                for i in range(segments.shape[-1]):
                    out[f"{detector.name}_segment{i}"] = segments[..., i]
                out[f"{detector.name}_dpc_x"] = segments[..., 0] - segments[..., 2]
                out[f"{detector.name}_dpc_y"] = segments[..., 1] - segments[..., 3]
            else:
                out[detector.name] = _mean_leading(array, 2)
        return out
    patterns = _mean_leading(np.asarray(measured["pixelated"], dtype=float), 4)
    out["diffraction"] = patterns
    sampling = measured["pixelated_sampling"]
    ax = (np.arange(patterns.shape[2]) - patterns.shape[2] // 2) * sampling[0]
    ay = (np.arange(patterns.shape[3]) - patterns.shape[3] // 2) * sampling[1]
    total = patterns.sum(axis=(2, 3))
    out["com_x"] = np.einsum("xyij,i->xy", patterns, ax) / total
    out["com_y"] = np.einsum("xyij,j->xy", patterns, ay) / total
    radius = np.hypot(ax[:, None], ay[None, :])
    for name, (inner, outer) in setup.parameters["detector_angles"].items():
        mask = (radius >= inner) & (radius < outer)
        out[name] = np.einsum("xyij,ij->xy", patterns, mask.astype(float))
    return out


def _scan(spec: ExperimentSpecV1, setup: AbtemSetup, prepared: PreparedExperiment) -> Any:
    import abtem

    lengths = prepared.atoms.cell.lengths()
    state_like = StateV1(energy=setup.energy, convergence_semiangle=setup.semiangle_cutoff)
    start, end, step = _scan_region(spec, (float(lengths[0]), float(lengths[1])), state_like)
    return abtem.GridScan(start=start, end=end, sampling=step), step


def _computed(measurements: Any, detectors: list[str]) -> dict[str, Any]:
    import dask

    if not isinstance(measurements, list):
        measurements = [measurements]
    arrays = dask.compute(*[m.array for m in measurements])
    out: dict[str, Any] = dict(zip(detectors, arrays, strict=True))
    if "pixelated" in out:
        out["pixelated_sampling"] = measurements[0].angular_sampling
    return out


class _PrismReduction:
    """An ensemble's annular and segmented STEM images from one PRISM S-matrix
    (interpolation 1), computed without forming a wave per probe position and member.

    abTEM's reduction makes member ``m``'s wave at probe position ``p`` as
    ``psi_p = sum_j X_pj S_j``, ``S_j`` the exit wave of plane wave ``j`` (wave vector
    ``k_j``) and ``X_pj = a_mj exp(-2 pi i k_j . r_p)`` (``a_mj`` the member's CTF at
    ``k_j``, normalised), then Fourier transforms it and sums ``|F psi_p|²`` over each
    detector region ``D``. That sum is the quadratic form ``sum_jl X_pj G_jl conj(X_pl)`` of
    the region's Gram matrix ``G_jl = sum_{k in D} F S_j(k) conj(F S_l(k))``, the same for
    every member and position. The Gram matrices are made once (one FFT per plane wave);
    a member then costs ``positions x J²`` multiply-adds per region (``J`` plane waves)
    instead of ``positions x J x grid`` and one FFT per position. The transforms, crops,
    normalisation and detector regions are abTEM's own, so the images are abTEM's (the
    tests compare them with ``SMatrixArray.reduce``)."""

    #: Most complex numbers held at once in one product (positions are done in chunks).
    CHUNK = 1 << 22

    def __init__(self, built: Any, scan: Any, detectors: Mapping[str, Any]) -> None:
        import abtem
        from abtem.measurements import _annular_detector_mask, _polar_detector_bins

        self.built = built
        self.dummy = built.dummy_probes()
        coefficients = np.asarray(built._calculate_positions_coefficients(scan))
        self.scan_shape = coefficients.shape[:-1]
        self.positions = coefficients.reshape(-1, coefficients.shape[-1])  # (P, J)
        waves = built.waves
        self.leading = tuple(waves.array.shape[:-3])  # phonon configurations
        self.grams: dict[str, np.ndarray] = {}  # name -> (C, bins, J, J)
        self.bin_shape: dict[str, tuple[int, ...]] = {}
        for name, detector in detectors.items():
            segmented = isinstance(detector, abtem.SegmentedDetector)
            fourier = waves.diffraction_patterns(
                max_angle=detector.outer if segmented else "full",
                parity="same",
                fftshift=False,
                return_complex=True,
            )
            array = np.asarray(fourier.array)
            gpts = array.shape[-2:]
            array = array.reshape(-1, array.shape[-3], gpts[0] * gpts[1])  # (C, J, K)
            if segmented:
                bins = _polar_detector_bins(
                    gpts=gpts,
                    sampling=fourier.angular_sampling,
                    inner=detector.inner,
                    outer=detector.outer,
                    nbins_radial=detector.nbins_radial,
                    nbins_azimuthal=detector.nbins_azimuthal,
                    rotation=detector.rotation,
                    fftshift=False,
                )
                count = detector.nbins_radial * detector.nbins_azimuthal
                self.bin_shape[name] = (detector.nbins_radial, detector.nbins_azimuthal)
            else:
                mask = _annular_detector_mask(
                    gpts=gpts,
                    sampling=fourier.angular_sampling,
                    inner=detector.inner,
                    outer=detector.outer,
                    fftshift=False,
                )
                bins = np.where(mask, 0, -1)
                count = 1
                self.bin_shape[name] = ()
            bins = np.asarray(bins).ravel()
            grams = []
            for label in range(count):
                region = array[:, :, bins == label]  # (C, J, K_D)
                grams.append(region @ np.conj(region).transpose(0, 2, 1))
            self.grams[name] = np.stack(grams, axis=1)

    def measure(self, ctf: Any) -> dict[str, np.ndarray]:
        """The member with probe CTF ``ctf``: per detector, abTEM's array shape (phonon
        configurations, scan x, scan y[, radial bins, azimuthal bins])."""
        ctf.grid.match(self.dummy)
        ctf.accelerator.match(self.built)
        weights = np.asarray(self.built._calculate_ctf_coefficients(ctf))  # (J,)
        x = self.positions * weights[None, :]  # (P, J)
        out = {}
        for name, grams in self.grams.items():
            configurations, count, size, _ = grams.shape
            values = np.empty((configurations, count, x.shape[0]))
            chunk = max(1, self.CHUNK // max(1, configurations * count * size))
            for start in range(0, x.shape[0], chunk):
                part = x[start : start + chunk]  # (p, J)
                # (C, bins, p, J): sum_j X_pj G_jl, then the form with conj(X_pl).
                products = np.matmul(part[None, None], grams)
                values[:, :, start : start + chunk] = np.einsum(
                    "cbpl,pl->cbp", products, np.conj(part)
                ).real
            shape = (*self.leading, *self.scan_shape)
            if self.bin_shape[name]:
                out[name] = np.moveaxis(values, 1, -1).reshape(*shape, *self.bin_shape[name])
            else:
                out[name] = values[:, 0].reshape(shape)
        return out


def _run_stem(
    spec: ExperimentSpecV1,
    setup: AbtemSetup,
    prepared: PreparedExperiment,
    members: list[dict[str, float]],
    progress: Progress | None,
) -> tuple[list[dict[str, np.ndarray]], float]:
    import abtem

    potential = _potential(spec, prepared)
    scan, step = _scan(spec, setup, prepared)
    names = list(setup.detectors)
    detectors = [setup.detectors[n] for n in names]
    results: list[dict[str, np.ndarray]] = []
    if len(members) == 1:
        with _TaskProgress(progress, 0.05, 0.9, "multislice").active():
            measured = setup.probe.scan(potential, scan=scan, detectors=detectors, lazy=True)
            results.append(_stem_arrays(spec, setup, _computed(measured, names)))
    else:
        s_matrix = abtem.SMatrix(
            potential=potential,
            energy=setup.energy,
            semiangle_cutoff=setup.semiangle_cutoff,
            interpolation=1,
            downsample=False,
        )
        with _TaskProgress(progress, 0.05, 0.5, "s-matrix").active():
            built = s_matrix.build(lazy=False)
        ctfs = [member_ctf(setup, aberrations, stem=True) for aberrations in members]
        if isinstance(spec.mode, StemModeV1):
            # Annular and segmented detectors: every member from the S-matrix's Gram
            # matrices, no wave per position and member.
            if progress is not None:
                progress(0.5, "detector matrices")
            reduction = _PrismReduction(built, scan, dict(zip(names, detectors, strict=True)))
            for i, ctf in enumerate(ctfs):
                if progress is not None:
                    progress(0.6 + 0.3 * i / len(ctfs), f"member {i + 1}/{len(ctfs)}")
                results.append(_stem_arrays(spec, setup, reduction.measure(ctf)))
        else:
            for i, ctf in enumerate(ctfs):
                low = 0.5 + 0.4 * i / len(members)
                high = 0.5 + 0.4 * (i + 1) / len(members)
                with _TaskProgress(progress, low, high, f"member {i + 1}/{len(members)}").active():
                    measured = built.reduce(scan=scan, detectors=detectors, ctf=ctf)
                    results.append(_stem_arrays(spec, setup, _computed(measured, names)))
    for arrays in results:
        for name, image in arrays.items():
            if image.ndim == 2:
                arrays[name] = _blur(image, setup.source_size, step)
    return results, step


class _HrtemMembers:
    """Every member's HRTEM image from one exit wave (per phonon configuration).

    The exit wave is Fourier transformed once. abTEM's multislice band-limits it (its
    anti-aliasing aperture, 2/3 of the Nyquist frequency), so only the frequencies where it
    is not zero (above 1e-13 of its largest coefficient: the rest is rounding) are imaged.
    There a member's CTF is ``exp(-i chi) E``, with abTEM's convention
    ``chi = 2 pi / lambda * sum C_nm alpha^(n+1) / (n+1) cos(m (phi - phi_nm))`` and the
    temporal envelope ``E = exp(-(pi / (2 lambda) * focal_spread * alpha²)²)``. chi is linear
    in the Cartesian components ``C_nm (cos m phi_nm, sin m phi_nm)``: the part that is the
    same for every member, with the envelope, is one kernel made once; a member multiplies
    it by the phase of the terms that vary, evaluated once per distinct ``alpha`` when only
    rotationally symmetric terms vary (defocus, Cs: the usual case). Then one inverse FFT per
    member."""

    #: Relative size below which a Fourier coefficient of the exit wave is rounding noise.
    NOISE = 1e-13

    def __init__(
        self,
        exit_wave: np.ndarray,
        sampling: tuple[float, float],
        setup: AbtemSetup,
        members: list[dict[str, float]],
    ) -> None:
        from abtem.core.fft import fft2

        self.shape = exit_wave.shape
        gpts = exit_wave.shape[-2:]
        # abTEM's FFTs (FFTW, with the plans the multislice made for this shape).
        fourier = fft2(exit_wave.reshape(-1, *gpts), overwrite_x=False)
        flat = fourier.reshape(-1, gpts[0] * gpts[1])
        magnitude = np.abs(flat).max(axis=0)
        self.support = np.flatnonzero(magnitude > self.NOISE * magnitude.max())
        self.spectrum = flat[:, self.support]  # (C, K)
        wavelength = _wavelength(setup.energy)
        kx = np.fft.fftfreq(gpts[0], sampling[0])[:, None]
        ky = np.fft.fftfreq(gpts[1], sampling[1])[None, :]
        alpha = (np.sqrt(kx**2 + ky**2) * wavelength).ravel()[self.support]
        phi = np.broadcast_to(np.arctan2(ky, kx), gpts).ravel()[self.support]
        # The terms (n, m) any member has, their basis functions and each member's weights.
        terms = sorted(
            {(int(k[1]), int(k[2])) for m in members for k, v in m.items() if k[0] == "C" and v}
        )
        basis, radial_only, weights = [], [], np.zeros((len(members), 2 * len(terms)))
        for t, (n, m) in enumerate(terms):
            radial = alpha ** (n + 1) / (n + 1)
            basis += [radial * np.cos(m * phi), radial * np.sin(m * phi)]
            radial_only += [m == 0, m == 0]
            for i, member in enumerate(members):
                value = float(member.get(f"C{n}{m}", 0.0))
                angle = float(member.get(f"phi{n}{m}", 0.0))
                weights[i, 2 * t : 2 * t + 2] = value * np.cos(m * angle), value * np.sin(m * angle)
        scale = 2 * np.pi / wavelength
        varies = np.any(weights != weights[:1], axis=0)
        fixed = np.zeros_like(alpha)
        for column in np.flatnonzero(~varies):
            fixed += weights[0, column] * basis[column]
        envelope = np.exp(-((0.5 * np.pi / wavelength * setup.focal_spread * alpha**2) ** 2))
        self.base = np.exp(-1j * scale * fixed) * envelope
        self.columns = np.flatnonzero(varies)
        self.weights = weights * scale
        # Varying terms of alpha alone: their phase at each distinct alpha, then gathered.
        self.inverse: np.ndarray | None = None
        if len(self.columns) and all(radial_only[c] for c in self.columns):
            alpha_values, self.inverse = np.unique(alpha, return_inverse=True)
            self.basis = [
                alpha_values ** (terms[c // 2][0] + 1) / (terms[c // 2][0] + 1)
                for c in self.columns
            ]
        else:
            self.basis = [basis[c] for c in self.columns]

    def image(self, index: int) -> np.ndarray:
        """Member ``index``'s image (phonon configurations averaged)."""
        from abtem.core.fft import ifft2

        kernel = self.base
        if len(self.columns):
            chi = np.zeros_like(self.basis[0])
            for column, values in zip(self.columns, self.basis, strict=True):
                chi += self.weights[index, column] * values
            phase = np.exp(-1j * chi)
            kernel = kernel * (phase if self.inverse is None else phase[self.inverse])
        full = np.zeros((self.spectrum.shape[0], self.shape[-2] * self.shape[-1]), complex)
        full[:, self.support] = self.spectrum * kernel
        waves = ifft2(full.reshape(-1, *self.shape[-2:]), overwrite_x=True)
        return _mean_leading(waves.real**2 + waves.imag**2, 2)


def _run_hrtem(
    spec: ExperimentSpecV1,
    setup: AbtemSetup,
    prepared: PreparedExperiment,
    members: list[dict[str, float]],
    progress: Progress | None,
) -> list[dict[str, np.ndarray]]:
    potential = _potential(spec, prepared)
    with _TaskProgress(progress, 0.05, 0.6, "exit wave").active():
        exit_wave = setup.plane_wave.multislice(potential, lazy=False)
    if len(members) == 1:  # abTEM's own CTF, exactly as a script would apply it
        with _TaskProgress(progress, 0.6, 0.9, "image").active():
            ctf = member_ctf(setup, members[0], stem=False)
            image = exit_wave.apply_ctf(ctf).intensity().compute().array
        return [{"image": _mean_leading(np.asarray(image), 2)}]
    # One exit wave (per phonon configuration), one FFT of it, a phase and one inverse FFT
    # per member.
    lengths = prepared.atoms.cell.lengths()
    sampling = (float(lengths[0]) / prepared.gpts[0], float(lengths[1]) / prepared.gpts[1])
    images = _HrtemMembers(np.asarray(exit_wave.array), sampling, setup, members)
    results = []
    for i in range(len(members)):
        if progress is not None:
            progress(0.6 + 0.3 * i / len(members), f"member {i + 1}/{len(members)}")
        results.append({"image": images.image(i)})
    return results


def _run_diffraction(
    spec: ExperimentSpecV1,
    setup: AbtemSetup,
    prepared: PreparedExperiment,
    members: list[dict[str, float]],
    progress: Progress | None,
) -> tuple[list[dict[str, np.ndarray]], tuple[float, float]]:
    import abtem

    potential = _potential(spec, prepared)
    mode = spec.mode
    assert isinstance(mode, CbedModeV1 | DiffractionModeV1)
    max_angle: Any = mode.max_angle or "cutoff"
    results = []
    sampling: tuple[float, float] = (0.0, 0.0)
    runs = members if isinstance(mode, CbedModeV1) else members[:1]
    for i, aberrations in enumerate(runs):
        low, high = 0.05 + 0.85 * i / len(runs), 0.05 + 0.85 * (i + 1) / len(runs)
        with _TaskProgress(progress, low, high, f"multislice {i + 1}/{len(runs)}").active():
            if isinstance(mode, CbedModeV1):
                lengths = prepared.atoms.cell.lengths()
                position = mode.position or (float(lengths[0]) / 2, float(lengths[1]) / 2)
                probe = abtem.Probe(
                    energy=setup.energy,
                    semiangle_cutoff=setup.semiangle_cutoff,
                    aberrations=dict(aberrations),
                )
                waves: Any = probe.multislice(potential, scan=[position], lazy=False)
            else:
                waves = setup.plane_wave.multislice(potential, lazy=False)
            patterns: Any = waves.diffraction_patterns(max_angle=max_angle).compute()
        sampling = (float(patterns.angular_sampling[0]), float(patterns.angular_sampling[1]))
        results.append({"pattern": _mean_leading(np.asarray(patterns.array), 2)})
    if len(runs) < len(members):
        results = results * len(members)
    return results, sampling


def _ensemble(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of one run, or an ensemble's mean, per-pixel standard deviation and
    members (``name``, ``name_std``, ``name_members``)."""
    if len(results) == 1:
        return dict(results[0])
    out = {}
    for name in results[0]:
        stack = np.stack([r[name] for r in results])
        if all(np.array_equal(member, stack[0]) for member in stack[1:]):
            # Identical members: exactly the member and a spread of exactly zero, not the
            # rounding noise of a mean of equal numbers.
            out[name], out[f"{name}_std"] = stack[0].copy(), np.zeros_like(stack[0])
        else:
            out[name], out[f"{name}_std"] = stack.mean(axis=0), stack.std(axis=0)
        if stack[0].ndim <= 2:
            out[f"{name}_members"] = stack
    return out


def _doses(spec: ExperimentSpecV1, state: StateV1, step: float, area: float) -> list[float]:
    """Doses [e/Å²]: the spec's, else the state's (``probe_current * dwell_time / e`` over a
    scan step's area in STEM, over the cell's ``area`` [Å²] otherwise)."""
    if spec.doses:
        return list(spec.doses)
    if isinstance(spec.mode, StemModeV1 | FourDStemModeV1):
        return [dose_per_area(state, step)]
    return [state.probe_current * state.dwell_time / ELEMENTARY_CHARGE / area]


def _noisy(
    arrays: dict[str, np.ndarray], doses: list[float], pixel_area: float, seed: int
) -> dict[str, np.ndarray]:
    """A Poisson realisation (electron counts) of each noise-free image per dose: the mean
    count of a pixel is its intensity (a fraction of the beam) x dose x ``pixel_area``."""
    out = {}
    for i, dose in enumerate(doses):
        rng = np.random.default_rng([seed, 2, i])
        for name, array in arrays.items():
            if name.endswith(("_std", "_members")) or name.startswith("com_") or "dpc" in name:
                continue
            if array.ndim != 2:
                continue
            expected = np.clip(array, 0, None) * dose * pixel_area
            out[f"{name}_dose{i}"] = rng.poisson(expected).astype(float)
    return out


def _axes(
    arrays: Mapping[str, np.ndarray], real: tuple[float, float], angular: tuple[float, float]
) -> dict[str, dict[str, list[Any]]]:
    axes: dict[str, dict[str, list[Any]]] = {}
    for name, array in arrays.items():
        diffraction = name.startswith(("pattern", "diffraction"))
        dims: list[str] = []
        sampling: list[float] = []
        units: list[str] = []
        leading = array.ndim - (4 if name.startswith("diffraction") else 2)
        for _ in range(leading):
            dims.append("member")
            sampling.append(1.0)
            units.append("")
        if name.startswith("diffraction"):
            dims += ["x", "y", "kx", "ky"]
            sampling += [real[0], real[1], angular[0], angular[1]]
            units += ["Å", "Å", "mrad", "mrad"]
        elif diffraction:
            dims += ["kx", "ky"]
            sampling += [angular[0], angular[1]]
            units += ["mrad", "mrad"]
        else:
            dims += ["x", "y"]
            sampling += [real[0], real[1]]
            units += ["Å", "Å"]
        axes[name] = {"dims": dims, "sampling": sampling, "units": units}
    return axes


def run_experiment(
    spec: ExperimentSpecV1,
    state: StateV1,
    *,
    uncertainty: UncertaintyV1 | None = None,
    limits: ExperimentLimits | None = None,
    specimen_limits: SpecimenLimits | None = None,
    progress: Progress | None = None,
    threads: int = 1,
) -> ExperimentResult:
    """Run ``spec`` with the microscope in ``state`` (already resolved: see
    :func:`simulations.resolve_state`), drawing ``spec.ensemble_size`` members from
    ``uncertainty`` (the spec's own, when it has one, wins). Deterministic for a given spec
    (frozen phonons, ensemble and noise are seeded from ``spec.seed``); abTEM computes with
    dask's synchronous scheduler inside (``threads`` > 1: its threaded scheduler with that
    many threads), so a dask.distributed task runs it whole."""
    import abtem
    import dask

    prepared = prepare_experiment(spec, state, limits=limits, specimen_limits=specimen_limits)
    members = draw_members(state, spec.uncertainty or uncertainty, spec.ensemble_size, spec.seed)
    setup = to_abtem(state, spec.mode)
    if progress is not None:
        progress(0.02, "prepared")
    config = {"diagnostics.progress_bar": False, "device": "cpu", "precision": "float64"}
    lengths = prepared.atoms.cell.lengths()
    pixel = (float(lengths[0]) / prepared.gpts[0], float(lengths[1]) / prepared.gpts[1])
    angular: tuple[float, float] = (0.0, 0.0)
    scheduler: dict[str, Any] = {"scheduler": "synchronous"}
    if threads > 1:
        scheduler = {"scheduler": "threads", "num_workers": threads}
    with abtem.config.set(config), dask.config.set(scheduler):
        if isinstance(spec.mode, StemModeV1 | FourDStemModeV1):
            results, step = _run_stem(spec, setup, prepared, members, progress)
            real = (step, step)
            pixel_area = step * step
            if isinstance(spec.mode, FourDStemModeV1):
                angular = _pattern_sampling(setup, prepared)
        elif isinstance(spec.mode, HrtemModeV1):
            results = _run_hrtem(spec, setup, prepared, members, progress)
            step, real, pixel_area = pixel[0], pixel, pixel[0] * pixel[1]
        else:
            results, angular = _run_diffraction(spec, setup, prepared, members, progress)
            step, real = pixel[0], pixel
            pixel_area = float(lengths[0] * lengths[1])
    arrays = _ensemble(results)
    doses = _doses(spec, state, step, float(lengths[0] * lengths[1]))
    arrays.update(_noisy(arrays, doses, pixel_area, spec.seed))
    parameters = {
        **setup.parameters,
        "state": state.model_dump(mode="json"),
        "members": members if len(members) > 1 else [],
        "doses": doses,
        "gpts": list(prepared.gpts),
        "slices": prepared.slices,
        "structure_sha256": prepared.structure_sha256,
        "atoms": len(prepared.atoms),
        "estimate": prepared.estimate.as_dict(),
        "versions": versions(),
    }
    if progress is not None:
        progress(1.0, "done")
    return ExperimentResult(arrays=arrays, axes=_axes(arrays, real, angular), parameters=parameters)


def _pattern_sampling(setup: AbtemSetup, prepared: PreparedExperiment) -> tuple[float, float]:
    lengths = prepared.atoms.cell.lengths()
    wavelength = _wavelength(setup.energy)
    return (1e3 * wavelength / float(lengths[0]), 1e3 * wavelength / float(lengths[1]))


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (abTEM, ASE, numpy)."""
    import abtem
    import ase

    return {"abtem": abtem.__version__, "ase": ase.__version__, "numpy": np.__version__}
