"""One gpax viDKL active-learning run, for ``bench/rehearsal.py`` (docs/rehearsal.md).

Runs in the bench's own gpax virtual environment (gpax needs its own JAX and numpyro), never
in beamtwin's: ``python _gpax_runner.py RUN.npz``; prints one JSON line. The run is the same
as the bench's DKL run: the first ``seed_points`` of the random order as seed points, the
noisy scene values as measurements, UCB (mean + ``beta`` sd of the noise-free posterior) over
every unmeasured candidate, the top region found within ``radius`` probe steps, stop at 90 % or
``budget`` measurements.

Refit schedule (that of ``simulations.DeepKernelModel.observe``): ``gpax.viDKL.fit`` (a new
model, gpax's SVI with its default MAP priors on the network and kernel) when the measured
points have grown by more than ``refit_fraction`` since the last fit (so every step while there
are few), and at every step up to ``refit_below`` points where ``DklSettings`` has it;
targets standardised with the mean and sd of the values at that fit. Between refits
the posterior is conditioned exactly on the new points with the fitted network and kernel
parameters: what ``viDKL.predict`` returns after ``X_train`` and ``y_train`` are extended
(``get_mvn_posterior`` is the exact GP posterior of the stored training data under the stored
parameters). The runner computes that posterior's mean and diagonal itself, with gpax's own
network (``nn_module.apply``) and kernel function, by rank-one updates: ``predict_in_batches``
forms the full ``batch x batch`` covariance of every batch and inverts the training covariance
once a batch, seconds a step at hundreds of points over 16k candidates. At the measured point
counts in ``checks`` it compares its posterior with ``predict_in_batches(noiseless=True)`` on
the extended training data (the largest differences, and how long gpax's call took).
"""

from __future__ import annotations

import json
import sys
import time

import gpax
import jax
import numpy as np


class Found:
    """The fraction of the top region within ``radius`` probe steps of a measured position
    (the rule of ``simulations._rehearsal._FoundTracker``)."""

    def __init__(self, top: np.ndarray, radius: float) -> None:
        self.top = top
        self.covered = np.zeros_like(top)
        reach = int(radius)
        self.offsets = [
            (dx, dy)
            for dx in range(-reach, reach + 1)
            for dy in range(-reach, reach + 1)
            if dx * dx + dy * dy <= radius * radius + 1e-9
        ]

    def add(self, index: int) -> float:
        nx, ny = self.top.shape
        ix, iy = divmod(int(index), ny)
        for dx, dy in self.offsets:
            x, y = ix + dx, iy + dy
            if 0 <= x < nx and 0 <= y < ny and self.top[x, y]:
                self.covered[x, y] = True
        return float(self.covered.sum() / self.top.sum())


class Posterior:
    """The exact GP posterior (noise-free mean and variance, standardised units) over every
    candidate under a fitted viDKL's network and kernel parameters, conditioned point by
    point."""

    def __init__(self, model: gpax.viDKL, features: np.ndarray, capacity: int) -> None:
        if model.kernel_name != "RBF":
            raise ValueError(f"the runner writes out gpax's RBF kernel, not {model.kernel_name}")
        params = {k: np.asarray(v, dtype=np.float64) for k, v in model.kernel_params.items()}
        self.length = params["k_length"]
        self.scale = float(params["k_scale"])
        # gpax adds its jitter (1e-6) to every covariance of a set with itself.
        self.noise = float(params["noise"]) + 1e-6
        latent = model.nn_module.apply(model.nn_params, jax.random.PRNGKey(0), features)
        self.latent = np.asarray(latent, dtype=np.float64)
        self.prior = self.scale + 1e-6  # the noise-free predictive variance's k(x, x)
        self.capacity = capacity

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """gpax's ``RBFKernel`` (``k_scale exp(-r²/2)``, ``r`` scaled by ``k_length``)
        without the noise and jitter on the diagonal, in numpy: gpax's jitted function
        compiles anew for every new number of points."""
        a, b = a / self.length, b / self.length
        r2 = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
        return self.scale * np.exp(-0.5 * r2.clip(0))

    def condition(self, rows: list[int], y: np.ndarray) -> None:
        """From scratch on the measured ``rows`` and their standardised values ``y``."""
        train = self.latent[rows]
        n = len(rows)
        self.inverse = np.linalg.inv(self.kernel(train, train) + self.noise * np.eye(n))
        self.cross = np.empty((len(self.latent), max(self.capacity, n)), dtype=np.float32)
        cross = self.kernel(self.latent, train)
        self.cross[:, :n] = cross
        self.mean = cross @ (self.inverse @ y)
        self.var = self.prior - np.einsum("ij,ij->i", cross @ self.inverse, cross)
        self.rows = list(rows)

    def add(self, row: int, y: float) -> None:
        """Condition on one more measurement (exact under the fixed parameters)."""
        n = len(self.rows)
        point = self.latent[row : row + 1]
        k = self.kernel(self.latent[self.rows], point)[:, 0]
        b = self.inverse @ k
        s = float(self.scale + self.noise - k @ b)
        column = self.kernel(self.latent, point)[:, 0]
        change = column - self.cross[:, :n] @ b.astype(np.float32)
        self.mean += change * ((y - self.mean[row]) / s)
        self.var -= change * change / s
        inverse = np.empty((n + 1, n + 1))
        inverse[:n, :n] = self.inverse + np.outer(b, b) / s
        inverse[:n, n] = inverse[n, :n] = -b / s
        inverse[n, n] = 1.0 / s
        self.inverse = inverse
        if n == self.cross.shape[1]:
            self.cross = np.concatenate([self.cross, np.empty_like(self.cross)], axis=1)
        self.cross[:, n] = column
        self.rows.append(row)


def ucb_choice(mean: np.ndarray, var: np.ndarray, taken: np.ndarray, beta: float) -> int:
    """The unmeasured candidate of the largest mean + beta sd."""
    scores = mean + beta * np.sqrt(np.clip(var, 1e-12, None))
    scores[taken] = -np.inf
    return int(np.argmax(scores))


def main() -> None:
    data = np.load(sys.argv[1])
    features = data["features"].astype(np.float32)
    values, top, order = data["values"], data["top"], data["order"]
    budget, seed_points = int(data["budget"]), int(data["seed_points"])
    num_steps, step_size = int(data["num_steps"]), float(data["step_size"])
    refit_fraction, beta = float(data["refit_fraction"]), float(data["beta"])
    refit_below = int(data["refit_below"]) if "refit_below" in data else 0
    checks = {int(n) for n in data["checks"]}
    found_tracker = Found(top, float(data["radius"]))
    measured = [int(i) for i in order[:seed_points]]
    found = [found_tracker.add(i) for i in measured][-1]
    key1, key2 = gpax.utils.get_keys(int(data["seed"]))
    taken = np.zeros(len(features), dtype=bool)
    taken[measured] = True
    model = posterior = None
    fitted_at, refits, fit_s, posterior_s, compared = 0, 0, 0.0, 0.0, []
    y_mean = y_scale = 0.0
    started = time.perf_counter()
    while found < 0.9 and len(measured) < budget:
        n = len(measured)
        if posterior is None or n <= refit_below or n - fitted_at > refit_fraction * fitted_at:
            clock = time.perf_counter()
            y_mean = float(values[measured].mean())
            y_scale = float(values[measured].std()) or 1.0
            y = ((values[measured] - y_mean) / y_scale).astype(np.float32)
            model = gpax.viDKL(features.shape[1], 2)
            model.fit(
                key1, features[measured], y, num_steps=num_steps, step_size=step_size,
                progress_bar=False, print_summary=False,
            )  # fmt: skip
            fit_s += time.perf_counter() - clock
            clock = time.perf_counter()
            posterior = Posterior(model, features, capacity=budget)
            posterior.condition(measured, (values[measured] - y_mean) / y_scale)
            posterior_s += time.perf_counter() - clock
            fitted_at, refits = n, refits + 1
        else:
            clock = time.perf_counter()
            for row in measured[len(posterior.rows) :]:
                posterior.add(row, (float(values[row]) - y_mean) / y_scale)
            posterior_s += time.perf_counter() - clock
        if n in checks:
            # gpax's own prediction on the same training data and parameters.
            model.X_train = features[measured]
            model.y_train = ((values[measured] - y_mean) / y_scale).astype(np.float32)
            clock = time.perf_counter()
            mean, var = model.predict_in_batches(key2, features, batch_size=4096, noiseless=True)
            mean, var = np.asarray(mean), np.asarray(var)
            seconds = time.perf_counter() - clock
            compared.append(
                {
                    "measured": n,
                    "since_fit": n - fitted_at,
                    "gpax_predict_s": round(seconds, 2),
                    "max_mean_diff": float(np.abs(mean - posterior.mean).max()),
                    "max_var_diff": float(np.abs(var - posterior.var).max()),
                    "same_choice": ucb_choice(mean, var, taken, beta)
                    == ucb_choice(posterior.mean, posterior.var, taken, beta),
                }
            )
        chosen = ucb_choice(posterior.mean, posterior.var, taken, beta)
        measured.append(chosen)
        taken[chosen] = True
        found = found_tracker.add(chosen)
        if len(measured) % 100 == 0:
            print(
                f"# gpax {len(measured)} measured, found {found:.3f}, {refits} fits, "
                f"{time.perf_counter() - started:.0f} s",
                file=sys.stderr, flush=True,
            )  # fmt: skip
    steps = max(1, len(measured) - seed_points)
    print(
        json.dumps(
            {
                "measurements": len(measured),
                "found": found,
                "seconds_per_step": (time.perf_counter() - started) / steps,
                "refits": refits,
                "fit_s": round(fit_s, 1),
                "posterior_s": round(posterior_s, 1),
                "checks": compared,
                "versions": {"gpax": gpax.__version__, "jax": jax.__version__},
            }
        )
    )


if __name__ == "__main__":
    main()
