"""Deep-kernel learning in pyro: a Gaussian process (``pyro.contrib.gp.models.GPRegression``)
whose RBF kernel acts on the output of a small torch network fed with HAADF image patches
(``pyro.contrib.gp.kernels.Warping`` with the network as its warping function), and the
acquisition functions an autonomous run ranks candidates with.

The network and the kernel's hyperparameters are fitted together by maximising the exact
marginal likelihood (what pyro's ``Trace_ELBO`` of the GP with no priors computes) with
Adam; a refit after new measurements starts from the last fit (warm start) and takes a few
steps. Targets are standardised inside; predictions come back in the property's unit.

:meth:`DeepKernelModel.observe` keeps the exact GP posterior over every candidate as
measurements arrive: it refits the network and kernel once the measured points have grown by
``refit_fraction`` since the last fit (every step up to ``refit_below``) and, between refits,
conditions the posterior on each new point by a rank-one update (``O(candidates x points)``
instead of ``O(candidates x points²)``), which keeps a step over 16k candidates fast at
thousands of measured points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulations._errors import SimulationError

__all__ = [
    "ACQUISITIONS",
    "AcquisitionError",
    "DeepKernelModel",
    "DklSettings",
    "acquisition_scores",
    "image_patches",
]

#: The acquisition functions: name -> what it prefers.
ACQUISITIONS: dict[str, str] = {
    "ei": "expected improvement over the best measured value",
    "ucb": "upper confidence bound: mean + beta x standard deviation",
    "max_variance": "the largest predictive standard deviation (pure exploration)",
    "thompson": "the maximum of one joint posterior sample",
}


class AcquisitionError(SimulationError, ValueError):
    """An unknown acquisition function, or patches that do not fit the image."""


@dataclass(frozen=True)
class DklSettings:
    """The model's size and training. ``latent``: dimensions the network maps a patch to;
    ``hidden``: width of its two hidden layers; ``first_steps`` / ``update_steps``: Adam steps
    of the first fit and of each warm-started refit; ``learning_rate``: Adam's;
    ``refit_below`` / ``refit_fraction``: :meth:`DeepKernelModel.observe` refits at every step
    up to ``refit_below`` measured points (where the network learns most: fewer refits there
    make the search worse), then once the points have grown by ``refit_fraction`` since the
    last fit, and conditions on the new points exactly with the fitted network and kernel in
    between."""

    latent: int = 2
    hidden: int = 32
    first_steps: int = 100
    update_steps: int = 20
    refit_fraction: float = 0.05
    refit_below: int = 200
    learning_rate: float = 0.01
    ucb_beta: float = 2.0
    ei_xi: float = 0.01
    thompson_pool: int = 512


def image_patches(image: np.ndarray, patch: int) -> np.ndarray:
    """The ``patch`` x ``patch`` window around every pixel of ``image`` (reflected at the
    borders), flattened: ``(image.size, patch²)`` in C order, so row ``k`` is the window of
    pixel ``np.unravel_index(k, image.shape)``. Each window is standardised by the image's own
    mean and standard deviation."""
    if patch < 1:
        raise AcquisitionError(f"the patch size must be >= 1, not {patch}")
    if patch > min(image.shape):
        raise AcquisitionError(
            f"a patch of {patch} probe positions is larger than the scene {image.shape}"
        )
    scale = float(image.std()) or 1.0
    normalised = (image - float(image.mean())) / scale
    low = patch // 2
    high = patch - 1 - low
    padded = np.pad(normalised, ((low, high), (low, high)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (patch, patch))
    return np.ascontiguousarray(windows.reshape(image.size, patch * patch))


class DeepKernelModel:
    """A GP with a deep kernel over patch features; ``fit`` on the measured rows, ``predict``
    on any rows of the same feature matrix. Seeded: the same seed and data give the same
    fit."""

    def __init__(self, features: np.ndarray, settings: DklSettings, seed: int) -> None:
        import pyro.contrib.gp as gp
        import torch

        self.settings = settings
        self.torch = torch
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.features = torch.as_tensor(features, dtype=torch.float64)
        dim = self.features.shape[1]
        self.network = torch.nn.Sequential(
            torch.nn.Linear(dim, settings.hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(settings.hidden, settings.hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(settings.hidden, settings.latent),
        ).double()
        torch.random.set_rng_state(generator_state)
        kernel = gp.kernels.Warping(
            gp.kernels.RBF(input_dim=settings.latent, lengthscale=torch.tensor(1.0).double()),
            iwarping_fn=self.network,
        )
        self.gp = gp.models.GPRegression(
            self.features[:1], torch.zeros(1, dtype=torch.float64), kernel,
            noise=torch.tensor(0.1, dtype=torch.float64), jitter=1e-5,
        )  # fmt: skip
        self.optimizer = torch.optim.Adam(self.gp.parameters(), lr=settings.learning_rate)
        self.fitted = False
        self.y_mean = 0.0
        self.y_scale = 1.0
        # The posterior over every candidate kept by observe(): measured rows, their
        # standardised values, L, V and z of _whiten(), the mean and variance.
        self._rows: list[int] = []
        self._y: list[float] = []
        self._fitted_at = 0
        self._latent: Any = None
        self._chol: Any = None
        self._whitened: Any = None
        self._z: Any = None
        self._mean: Any = None
        self._var: Any = None

    def loss(self) -> Any:
        """The GP's exact negative log marginal likelihood of its data (without the constant
        ``n/2 log 2 pi``): what pyro's ``Trace_ELBO`` of ``GPRegression`` without priors
        evaluates, written out so that a training step skips pyro's tracing."""
        torch = self.torch
        x, y = self.gp.X, self.gp.y
        n = x.shape[0]
        eye = torch.eye(n, dtype=x.dtype)
        cov = self.gp.kernel(x) + (self.gp.noise + self.gp.jitter) * eye
        chol = torch.linalg.cholesky(cov)
        alpha = torch.cholesky_solve(y[:, None], chol)
        return 0.5 * (y[:, None] * alpha).sum() + torch.log(torch.diagonal(chol)).sum()

    def fit(self, rows: np.ndarray, values: np.ndarray) -> float:
        """Fit on the measured ``rows`` of the feature matrix and their ``values``; the last
        loss (negative log marginal likelihood per point)."""
        torch = self.torch
        self.y_mean = float(values.mean())
        self.y_scale = float(values.std()) or 1.0
        y = torch.as_tensor((values - self.y_mean) / self.y_scale, dtype=torch.float64)
        self.gp.set_data(self.features[torch.as_tensor(rows)], y)
        steps = self.settings.update_steps if self.fitted else self.settings.first_steps
        loss = torch.tensor(0.0)
        for _ in range(steps):
            self.optimizer.zero_grad()
            loss = self.loss()
            loss.backward()
            self.optimizer.step()
        self.fitted = True
        return float(loss.detach()) / len(rows)

    def predict(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (noise-free) at ``rows`` (default all), in
        the property's unit, from scratch with the fitted network and kernel (what
        :meth:`observe` keeps up to date)."""
        torch = self.torch
        x = self.features if rows is None else self.features[torch.as_tensor(rows)]
        with torch.no_grad():
            latent = self.network(x)
            _, whitened, z = self._whiten(latent, self.network(self.gp.X), self.gp.y)
            mean = whitened.T @ z
            var = self.gp.kernel.kern.variance - (whitened * whitened).sum(dim=0)
        sd = np.sqrt(np.clip(var.numpy(), 1e-12, None))
        return mean.numpy() * self.y_scale + self.y_mean, sd * self.y_scale

    def _whiten(self, latent: Any, train: Any, y: Any) -> tuple[Any, Any, Any]:
        """``L`` (the Cholesky factor of the measured points' covariance with noise),
        ``V = L^-1 K(train, latent)`` (points x candidates) and ``z = L^-1 y``: the posterior
        mean is ``V^T z`` and the variance ``k(x, x) - |V_x|²``, a sum of squares, which keeps
        its precision where the measurements pin the variance down (the form ``k - c^T K^-1
        c`` loses it to cancellation there)."""
        torch = self.torch
        base = self.gp.kernel.kern
        n = train.shape[0]
        cov = base(train) + (self.gp.noise + self.gp.jitter) * torch.eye(n, dtype=train.dtype)
        chol = torch.linalg.cholesky(cov)
        whitened = torch.linalg.solve_triangular(chol, base(train, latent), upper=False)
        z = torch.linalg.solve_triangular(chol, y[:, None], upper=False)[:, 0]
        return chol, whitened, z

    def observe(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (noise-free, property unit) at every
        candidate given the measured ``rows`` and ``values`` so far, the first rows those of
        the previous call: a refit (:meth:`fit`) up to ``refit_below`` points and then when
        they have grown by ``refit_fraction`` since the last one, else the new points
        conditioned on exactly with the fitted network and kernel (a rank-one update each)."""
        rows = np.asarray(rows, dtype=int)
        values = np.asarray(values, dtype=float)
        n = len(rows)
        if n < len(self._rows) or list(rows[: len(self._rows)]) != self._rows:
            raise AcquisitionError("observe() takes the measured points so far, in order")
        grown = n - self._fitted_at
        settings = self.settings
        if (
            not self.fitted
            or n <= settings.refit_below
            or grown > settings.refit_fraction * self._fitted_at
        ):
            self.fit(rows, values)
            self._fitted_at = n
            self._condition(rows, values)
        else:
            for row, value in zip(rows[len(self._rows) :], values[len(self._rows) :], strict=True):
                self._add(int(row), float(value))
        var = np.clip(self._var.numpy(), 1e-12, None)
        return self._mean.numpy() * self.y_scale + self.y_mean, np.sqrt(var) * self.y_scale

    def _condition(self, rows: np.ndarray, values: np.ndarray) -> None:
        """The kept posterior from scratch with the fitted network and kernel: ``L``, ``V``
        (float32, rows grown by doubling), ``z``, the mean and variance (see
        :meth:`_whiten`)."""
        torch = self.torch
        with torch.no_grad():
            self._latent = self.network(self.features)
            y = torch.as_tensor((values - self.y_mean) / self.y_scale, dtype=torch.float64)
            chol, whitened, z = self._whiten(self._latent, self._latent[torch.as_tensor(rows)], y)
            n = len(rows)
            self._chol = chol
            self._whitened = torch.empty((max(64, 2 * n), len(self._latent)), dtype=torch.float32)
            self._whitened[:n] = whitened.float()
            self._z = z
            self._mean = whitened.T @ z
            self._var = self.gp.kernel.kern.variance.detach() - (whitened * whitened).sum(dim=0)
        self._rows = [int(r) for r in rows]
        self._y = [float(v) for v in y]

    def _add(self, row: int, value: float) -> None:
        """Condition the kept posterior on one more measurement (exact for the fitted network
        and kernel): one more row of ``L``, ``V`` and ``z``; the variance loses the new row of
        ``V`` squared, the mean gains it times the new ``z``."""
        torch = self.torch
        base = self.gp.kernel.kern
        with torch.no_grad():
            n = len(self._rows)
            point = self._latent[row : row + 1]
            k = base(self._latent[torch.as_tensor(self._rows)], point)
            line = torch.linalg.solve_triangular(self._chol, k, upper=False)[:, 0]
            d = torch.sqrt(base.variance + self.gp.noise + self.gp.jitter - line @ line)
            column = base(self._latent, point)[:, 0]
            v = (column - (self._whitened[:n].T @ line.float()).double()) / d
            y = (value - self.y_mean) / self.y_scale
            z = (y - line @ self._z) / d
            self._mean += v * z
            self._var -= v * v
            chol = torch.zeros((n + 1, n + 1), dtype=torch.float64)
            chol[:n, :n] = self._chol
            chol[n, :n], chol[n, n] = line, d
            self._chol = chol
            self._z = torch.cat([self._z, z.reshape(1)])
            if n == self._whitened.shape[0]:
                grown = torch.empty((2 * n, self._whitened.shape[1]), dtype=torch.float32)
                grown[:n] = self._whitened
                self._whitened = grown
            self._whitened[n] = v.float()
        self._rows.append(row)
        self._y.append(y)
        self.gp.set_data(
            self.features[torch.as_tensor(self._rows)],
            torch.as_tensor(self._y, dtype=torch.float64),
        )

    def sample_joint(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """One draw of the posterior jointly at ``rows`` (property unit)."""
        torch = self.torch
        with torch.no_grad():
            mean, cov = self.gp(self.features[torch.as_tensor(rows)], full_cov=True, noiseless=True)
            eye = torch.eye(len(rows), dtype=cov.dtype)
            chol = torch.linalg.cholesky(cov + 1e-8 * eye)
            generator = torch.Generator().manual_seed(seed)
            z = torch.randn(len(rows), generator=generator, dtype=cov.dtype)
            draw = mean + chol @ z
        return draw.numpy() * self.y_scale + self.y_mean


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(z))


def acquisition_scores(
    name: str,
    mean: np.ndarray,
    sd: np.ndarray,
    *,
    best: float,
    settings: DklSettings,
    model: DeepKernelModel | None = None,
    rows: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The score of every candidate (higher: measure sooner) under acquisition ``name``.
    ``best`` is the best value measured so far; Thompson needs the ``model`` and the
    candidates' ``rows``: it draws jointly over the ``thompson_pool`` candidates of highest
    ``mean + 3 sd`` (the others score -inf: their chance of holding the maximum is nil)."""
    if name == "ucb":
        return mean + settings.ucb_beta * sd
    if name == "max_variance":
        return sd.copy()
    if name == "ei":
        improvement = mean - best - settings.ei_xi * max(abs(best), 1e-12)
        z = improvement / np.maximum(sd, 1e-12)
        return improvement * _normal_cdf(z) + sd * _normal_pdf(z)
    if name == "thompson":
        if model is None or rows is None:
            raise AcquisitionError("Thompson sampling needs the model and the candidates' rows")
        pool = np.argsort(-(mean + 3 * sd), kind="stable")[: settings.thompson_pool]
        scores = np.full(mean.shape, -np.inf)
        scores[pool] = model.sample_joint(rows[pool], seed)
        return scores
    raise AcquisitionError(f"unknown acquisition function {name!r}; one of {sorted(ACQUISITIONS)}")
