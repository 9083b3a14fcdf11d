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
``refit_fraction`` since the last fit (every step while there are few) and, between refits,
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
    of the first fit and of each warm-started refit; ``learning_rate``: Adam's."""

    latent: int = 2
    hidden: int = 32
    first_steps: int = 100
    update_steps: int = 20
    refit_fraction: float = 0.05
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
        # standardised values, the inverse of their covariance, the cross covariances of every
        # candidate with them (float32, grown by doubling), the mean and variance.
        self._rows: list[int] = []
        self._y: list[float] = []
        self._fitted_at = 0
        self._latent: Any = None
        self._inverse: Any = None
        self._cross: Any = None
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
        the property's unit. The feature network runs once over the rows; the cross
        covariances against the measured points go through one matrix product (float32),
        not a triangular solve per row: this is what keeps a step over 16k candidates fast."""
        torch = self.torch
        x = self.features if rows is None else self.features[torch.as_tensor(rows)]
        base = self.gp.kernel.kern
        with torch.no_grad():
            train = self.network(self.gp.X)
            n = train.shape[0]
            cov = base(train) + (self.gp.noise + self.gp.jitter) * torch.eye(n, dtype=train.dtype)
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(cov))
            weights = (inverse @ self.gp.y).float()
            latent = self.network(x)
            cross = base(latent, train).float()
            mean = cross @ weights
            var = base.variance.float() - ((cross @ inverse.float()) * cross).sum(dim=1)
        sd = np.sqrt(np.clip(var.double().numpy(), 1e-12, None))
        return mean.double().numpy() * self.y_scale + self.y_mean, sd * self.y_scale

    def observe(self, rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (noise-free, property unit) at every
        candidate given the measured ``rows`` and ``values`` so far, the first rows those of
        the previous call: a refit (:meth:`fit`) when the points have grown by
        ``refit_fraction`` since the last one, else the new points conditioned on exactly with
        the fitted network and kernel (a rank-one update each)."""
        rows = np.asarray(rows, dtype=int)
        values = np.asarray(values, dtype=float)
        n = len(rows)
        if n < len(self._rows) or list(rows[: len(self._rows)]) != self._rows:
            raise AcquisitionError("observe() takes the measured points so far, in order")
        grown = n - self._fitted_at
        if not self.fitted or grown > self.settings.refit_fraction * self._fitted_at:
            self.fit(rows, values)
            self._fitted_at = n
            self._condition(rows, values)
        else:
            for row, value in zip(rows[len(self._rows) :], values[len(self._rows) :], strict=True):
                self._add(int(row), float(value))
        torch = self.torch
        var = torch.clamp(self._var, min=1e-12).double().numpy()
        mean = self._mean.double().numpy()
        return mean * self.y_scale + self.y_mean, np.sqrt(var) * self.y_scale

    def _condition(self, rows: np.ndarray, values: np.ndarray) -> None:
        """The posterior from scratch with the fitted network and kernel."""
        torch = self.torch
        base = self.gp.kernel.kern
        with torch.no_grad():
            self._latent = self.network(self.features)
            train = self._latent[torch.as_tensor(rows)]
            n = len(rows)
            noise = self.gp.noise + self.gp.jitter
            cov = base(train) + noise * torch.eye(n, dtype=train.dtype)
            self._inverse = torch.cholesky_inverse(torch.linalg.cholesky(cov))
            y = torch.as_tensor((values - self.y_mean) / self.y_scale, dtype=torch.float64)
            capacity = max(64, 2 * n)
            self._cross = torch.empty((len(self._latent), capacity), dtype=torch.float32)
            cross = base(self._latent, train).float()
            self._cross[:, :n] = cross
            self._mean = cross @ (self._inverse @ y).float()
            self._var = base.variance.float() - ((cross @ self._inverse.float()) * cross).sum(1)
        self._rows = [int(r) for r in rows]
        self._y = [float(v) for v in y]

    def _add(self, row: int, value: float) -> None:
        """Condition the kept posterior on one more measurement (exact, fixed kernel)."""
        torch = self.torch
        base = self.gp.kernel.kern
        with torch.no_grad():
            n = len(self._rows)
            point = self._latent[row : row + 1]
            k = base(self._latent[torch.as_tensor(self._rows)], point)[:, 0]
            b = self._inverse @ k
            s = base.variance + self.gp.noise + self.gp.jitter - k @ b
            column = base(self._latent, point)[:, 0].float()
            change = column - self._cross[:, :n] @ b.float()
            y = (value - self.y_mean) / self.y_scale
            self._mean += change * float((y - float(self._mean[row])) / s)
            self._var -= change * change / float(s)
            inverse = torch.empty((n + 1, n + 1), dtype=torch.float64)
            inverse[:n, :n] = self._inverse + torch.outer(b, b) / s
            inverse[:n, n] = inverse[n, :n] = -b / s
            inverse[n, n] = 1.0 / s
            self._inverse = inverse
            if n == self._cross.shape[1]:
                grown = torch.empty((self._cross.shape[0], 2 * n), dtype=torch.float32)
                grown[:, :n] = self._cross
                self._cross = grown
            self._cross[:, n] = column
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
