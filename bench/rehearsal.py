"""Rehearsals of an autonomous deep-kernel active-learning run (docs/rehearsal.md): how many
measurements DKL needs to find the top-1% region of the 4D-STEM CoM magnitude, against random
and raster on the same scenes with the same measurements, against gpax's viDKL, and how long
a step takes.

* ``dkl_measurements_to_90pct_vs_random``: median over scenes x seeds of (measurements DKL
  with the best acquisition function needs to find 90 % of the top-1 % region) / (those a
  random order needs; a run that does not get there within ``--cap`` counts as every
  position); target <= 0.33. The best acquisition function is the one of smallest median
  ratio. ``dkl_measurements_to_90pct_vs_raster``: the same
  against coarse-to-fine raster (target < 1). ``<acquisition>_measurements_to_90pct``: the
  median for every acquisition function.
* ``dkl_vs_gpax_measurements_ratio``: median over scene x seed pairs of (our DKL's
  measurements to 90 % with UCB) / (gpax viDKL's), target <= 1; a run not at 90 % within
  ``--cap`` counts as every position. gpax runs in its own virtual environment made here
  under ``--cache`` (``GPAX_PINS``: gpax 0.1.9 needs jax >= 0.6.2 and numpyro's haiku
  modules, gone after numpyro 0.19), never in beamtwin's; when it cannot be made or run, the
  line says why. How gpax is run (``bench/_gpax_runner.py``), the same as our run wherever
  the two can be the same: the same scene, seed points (the random order's first 10), noisy
  measurements (``DOSE``, same seed), patches (8 x 8, the same feature matrix), UCB with
  beta 2 on the noise-free posterior, found rule (top 1 %, radius 1.5) and cap; the same refit
  schedule: a fit when the measured points have grown by more than 5 % since the last
  (``DklSettings.refit_fraction``; every step below 20 points), targets standardised at each
  fit. A fit is ``gpax.viDKL(64, 2).fit`` as gpax ships it: a new model (its 64-64 ReLU MLP
  to 2 latent dimensions, RBF kernel, its default priors and MAP guide), fit's default 1000
  SVI steps at step size 5e-3 (``--gpax-steps``), so unlike ours (warm-started, 20 Adam
  steps) each refit starts from scratch. Between fits the new points are conditioned on
  exactly with the fitted network and kernel: ``viDKL.predict`` on extended ``X_train`` /
  ``y_train`` is the exact GP posterior under the stored parameters; the runner computes the
  same posterior's mean and variance by rank-one updates with gpax's network and its RBF
  written out (gpax's ``predict_in_batches`` forms every batch's full covariance: seconds a
  step at hundreds of points) and checks it against ``predict_in_batches`` at 100 and 500
  measured points (the largest differences and whether UCB picks the same point are
  printed). JAX on the CPU with one thread, a persistent compilation cache (every fit
  compiles for its number of points). ``--only gpax`` runs only this comparison, our DKL
  (UCB) and gpax on each pair of ``--gpax-pairs scene:seed,...`` (default: the first
  ``--gpax-scenes`` scenes x ``--gpax-seeds`` seeds), one process at a time; in the full
  run gpax is compared with the UCB counts of the same run.
* ``dkl_step_latency_s``: one step (refit + predict + acquire) at 200 measured points over
  the 16384 candidates of a 128 x 128 scene (the median of the steps at 198, 199 and 200
  points; target <= 1 s on this 2-core machine).

Full run: 3 scenes (128 x 128 probe positions; made by 4D-STEM virtual experiments and
cached in ``--cache``) x 10 seeds. ``--quick``: one 32 x 32 scene, one seed, UCB only, no gpax.
Run from the repository root: ``python bench/rehearsal.py [--quick]``; the gpax comparison
alone: ``python bench/rehearsal.py --only gpax --gpax-pairs mos2-dopants:0,mos2-edge:1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations import (  # noqa: E402
    ACQUISITIONS,
    SCENE_PRESETS,
    DeepKernelModel,
    DklSettings,
    Scene,
    StateV1,
    acquisition_scores,
    image_patches,
    make_scene,
    measurements_to_fraction,
    rehearse,
    strategy_order,
    top_region,
)

STATE = StateV1(energy=80e3, convergence_semiangle=30.0)
PROPERTY = "com"
DOSE = 1e5  # e/Å²: 9000 electrons per 0.3 Å probe step
PATCH = 8
SEED_POINTS = 10
TOP = 0.01
RADIUS = 1.5
# gpax 0.1.9 asks for jax >= 0.6.2 and numpyro >= 0.18; viDKL imports numpyro's haiku modules,
# which numpyro 0.19 still has and later versions do not.
GPAX_PINS = (
    "gpax==0.1.9", "jax==0.6.2", "jaxlib==0.6.2", "numpyro==0.19.0", "dm-haiku==0.0.14",
    "flax==0.10.7",
)  # fmt: skip
GPAX_STEPS = 1000  # SVI steps a fit: viDKL.fit's default
GPAX_STEP_SIZE = 5e-3  # viDKL.fit's default
GPAX_CHECKS = (100, 500)  # measured points at which the runner checks against gpax's predict


def scenes(cache: Path, quick: bool, positions: int | None) -> list[Scene]:
    names = ["mos2-dopants"] if quick else list(SCENE_PRESETS)
    side = 32 if quick else positions
    made = []
    for name in names:
        recipe = SCENE_PRESETS[name] if side is None else SCENE_PRESETS[name].resized(side)
        started = time.perf_counter()
        scene = make_scene(recipe, STATE, cache_dir=cache)
        cached = "cached" if scene.parameters.get("cached") else "made"
        print(f"# scene {name} {scene.shape}: {cached} in {time.perf_counter() - started:.0f} s")
        made.append(scene)
    return made


def baseline_counts(scene: Scene, seed: int) -> dict[str, int]:
    top = top_region(scene.truth(PROPERTY), TOP)
    counts = {}
    for strategy in ("random", "raster"):
        order = strategy_order(strategy, scene.shape, seed)
        n = measurements_to_fraction(order, top, fraction=0.9, radius=RADIUS)
        counts[strategy] = n if n is not None else scene.haadf.size
    return counts


def dkl_count(scene: Scene, acquisition: str, seed: int, cap: int) -> tuple[int, float]:
    run = rehearse(
        scene, prop=PROPERTY, acquisition=acquisition, patch=PATCH,
        budget=min(cap, scene.haadf.size),
        seed_points=SEED_POINTS, dose=DOSE, seed=seed, target_fraction=0.9,
        top_fraction=TOP, found_radius=RADIUS,
    )  # fmt: skip
    n = run.measurements_to(0.9)
    latency = run.column("latency_s")[SEED_POINTS:]
    return (n if n is not None else scene.haadf.size), float(np.median(latency))


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _dkl_task(task: tuple[Scene, str, int, int]) -> tuple[int, float]:
    return dkl_count(*task)


def bench_latency(scene: Scene) -> None:
    """One step at 200 measured points over a 128 x 128 scene's candidates."""
    import pyro
    import torch

    haadf = scene.haadf
    if haadf.shape[0] < 128:
        haadf = np.tile(haadf, (128 // haadf.shape[0] + 1,) * 2)[:128, :128]
    truth = np.resize(scene.truth(PROPERTY), haadf.shape)
    features = image_patches(haadf, PATCH)
    rows = np.random.default_rng(0).choice(haadf.size, size=200, replace=False)
    settings = DklSettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pyro.get_param_store().scope():
            model = DeepKernelModel(features, settings, seed=0)
            values = truth.reshape(-1)
            model.fit(rows[:197], values[rows[:197]])  # the first fit, then three steps:
            latencies = []
            for n in (198, 199, 200):
                started = time.perf_counter()
                model.fit(rows[:n], values[rows[:n]])
                mean, sd = model.predict()
                scores = acquisition_scores(
                    "ucb", mean, sd, best=float(values[rows[:n]].max()), settings=settings
                )
                scores[rows[:n]] = -np.inf
                int(np.argmax(scores))
                latencies.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    print(f"dkl_step_latency_s: {float(np.median(latencies)):.3f}")
    print(
        f"# latency at 198, 199, 200 points: {', '.join(f'{v:.3f}' for v in latencies)} s; "
        f"{features.shape[0]} candidates, {settings.update_steps} Adam steps a refit"
    )


GPAX_RUNNER = Path(__file__).with_name("_gpax_runner.py")
# The runner's environment: JAX on the CPU, one thread (the machine is shared), a persistent
# compilation cache (viDKL's fit compiles anew for every new number of points; the refit
# schedule gives every run the same numbers).
GPAX_ENV = {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def gpax_python(cache: Path) -> tuple[Path | None, str]:
    """The gpax virtual environment's python, made (or remade when the pins changed) under
    ``cache``; None and why when it cannot be installed or does not import."""
    venv = cache / "gpax-venv"
    python = venv / "bin" / "python"
    marker = venv / "beamtwin-pins.txt"
    pins = "\n".join(GPAX_PINS)
    if not python.exists() or not marker.exists() or marker.read_text() != pins:
        try:
            print(f"# making the gpax environment {venv}: {' '.join(GPAX_PINS)}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, *GPAX_PINS], check=True, capture_output=True, timeout=1800)
            marker.write_text(pins)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            return None, f"cannot install gpax: {exc} {detail.decode(errors='replace')[-300:]}"
    probe = subprocess.run(
        [str(python), "-c", "import gpax; gpax.viDKL"], capture_output=True, text=True,
        env={**os.environ, **GPAX_ENV},
    )  # fmt: skip
    if probe.returncode != 0:
        return None, f"gpax does not import: {probe.stderr.strip().splitlines()[-1:]}"
    return python, "ok"


def gpax_count(
    python: Path, scene: Scene, seed: int, cap: int, timeout: float, steps: int
) -> dict[str, Any] | None:
    """gpax viDKL's run on ``scene`` with ``seed`` (see ``bench/_gpax_runner.py``): its
    answer, ``count`` the measurements to 90 % (every position when not reached within
    ``cap``); None when it failed or did not finish within ``timeout`` [s]."""
    settings = DklSettings()
    top = top_region(scene.truth(PROPERTY), TOP)
    env = {
        **os.environ, **GPAX_ENV, "JAX_COMPILATION_CACHE_DIR": str(python.parents[1] / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "run.npz"
        np.savez(
            data, features=image_patches(scene.haadf, PATCH),
            values=scene.measured(PROPERTY, DOSE, seed).reshape(-1), top=top,
            order=strategy_order("random", scene.shape, seed), budget=min(cap, scene.haadf.size),
            seed_points=SEED_POINTS, radius=RADIUS, seed=seed, num_steps=steps,
            step_size=GPAX_STEP_SIZE, refit_fraction=settings.refit_fraction,
            refit_below=getattr(settings, "refit_below", 0),
            beta=settings.ucb_beta, checks=np.array(GPAX_CHECKS),
        )  # fmt: skip
        try:
            done = subprocess.run(
                [str(python), str(GPAX_RUNNER), str(data)], stdout=subprocess.PIPE, text=True,
                check=True, timeout=timeout, env=env,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            print(f"# gpax {scene.recipe.name} seed {seed}: not done within {timeout:.0f} s")
            return None
        except subprocess.CalledProcessError as exc:
            print(f"# gpax {scene.recipe.name} seed {seed}: failed (exit {exc.returncode})")
            return None
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    reached = answer["found"] >= 0.9 - 1e-12
    answer["count"] = int(answer["measurements"]) if reached else scene.haadf.size
    return answer


def compare_gpax(
    args: argparse.Namespace, made: list[Scene], ours: Callable[[Scene, int], int]
) -> None:
    """gpax against our DKL (UCB) on the scene x seed pairs asked for, one pair at a time;
    ``ours(scene, seed)`` gives our count. Prints a line a pair and the median ratio."""
    python, why = gpax_python(args.cache)
    if python is None:
        print(f"dkl_vs_gpax_measurements_ratio: not run ({why})")
        return
    by_name = {scene.recipe.name: scene for scene in made}
    if args.gpax_pairs:
        pairs = []
        for item in args.gpax_pairs.split(","):
            name, _, seed = item.partition(":")
            if name not in by_name:
                raise SystemExit(f"unknown scene {name!r} in --gpax-pairs; one of {list(by_name)}")
            pairs.append((by_name[name], int(seed or 0)))
    else:
        pairs = [
            (scene, seed)
            for seed in range(min(args.seeds, args.gpax_seeds))
            for scene in made[: args.gpax_scenes]
        ]
    started = time.perf_counter()
    ratios, theirs, mine = [], [], []
    for scene, seed in pairs:
        if args.gpax_total_s and time.perf_counter() - started > args.gpax_total_s:
            print(f"# gpax: --gpax-total-s {args.gpax_total_s:.0f} s spent, pairs left out")
            break
        answer = gpax_count(python, scene, seed, args.cap, args.gpax_timeout, args.gpax_steps)
        if answer is None:
            continue
        n = ours(scene, seed)
        theirs.append(answer["count"])
        mine.append(n)
        ratios.append(n / answer["count"])
        print(
            f"# gpax {scene.recipe.name} seed {seed}: {answer['count']} "
            f"(found {answer['found']:.3f} at {answer['measurements']}; "
            f"{answer['seconds_per_step']:.2f} s a step, {answer['refits']} fits "
            f"{answer['fit_s']:.0f} s, posterior {answer['posterior_s']:.0f} s); "
            f"DKL ucb {n}; ratio {ratios[-1]:.3f}; checks {json.dumps(answer['checks'])}",
            flush=True,
        )
    if ratios:
        print(f"dkl_vs_gpax_measurements_ratio: {np.median(ratios):.3f}")
        print(f"# gpax pairs: {len(theirs)}, gpax {theirs}; DKL ucb {mine}")
    else:
        print("dkl_vs_gpax_measurements_ratio: not run (no gpax run finished in time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cap", type=int, default=1500, help="most DKL measurements a run")
    parser.add_argument("--gpax-seeds", type=int, default=3, help="seeds per scene for gpax")
    parser.add_argument("--gpax-timeout", type=float, default=1800, help="[s] per gpax run")
    parser.add_argument("--gpax-scenes", type=int, default=3, help="scenes gpax runs on")
    parser.add_argument(
        "--gpax-pairs", default="", help="scene:seed,... gpax runs on (instead of the above)"
    )
    parser.add_argument("--gpax-steps", type=int, default=GPAX_STEPS, help="SVI steps a fit")
    parser.add_argument(
        "--gpax-total-s", type=float, default=0, help="[s] no new gpax pair after this (0: none)"
    )
    parser.add_argument(
        "--only", choices=("all", "gpax"), default="all",
        help="gpax: only gpax against our DKL (UCB), both run per pair",
    )  # fmt: skip
    parser.add_argument(
        "--acquisitions", default=",".join(sorted(ACQUISITIONS)), help="comma-separated"
    )
    parser.add_argument("--positions", type=int, default=None, help="smaller scenes (a side)")
    parser.add_argument("--scenes", type=int, default=3, help="how many of the scenes")
    parser.add_argument(
        "--jobs", type=int, default=1, help="DKL runs at once (processes of one thread each)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "beamtwin-rehearsal-scenes"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    made = scenes(args.cache, args.quick, args.positions)[: args.scenes]
    seeds = 1 if args.quick else args.seeds
    if args.only == "gpax":

        def ours(scene: Scene, seed: int) -> int:
            n, latency = dkl_count(scene, "ucb", seed, args.cap)
            print(
                f"# {scene.recipe.name} seed {seed} ucb: {n} "
                f"(random {baseline_counts(scene, seed)['random']}; median step {latency:.3f} s)",
                flush=True,
            )
            return n

        compare_gpax(args, made, ours)
        print(f"# total {time.perf_counter() - started:.0f} s")
        return
    acquisitions = ["ucb"] if args.quick else args.acquisitions.split(",")
    counts: dict[str, list[int]] = {a: [] for a in acquisitions}
    base: dict[str, list[int]] = {"random": [], "raster": []}
    pairs = [(scene, seed) for scene in made for seed in range(seeds)]
    for scene, seed in pairs:
        for strategy, n in baseline_counts(scene, seed).items():
            base[strategy].append(n)
    runs = [(scene, a, seed, args.cap) for scene, seed in pairs for a in acquisitions]
    pool = None
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(args.jobs, initializer=_one_thread)
    results = pool.map(_dkl_task, runs) if pool is not None else map(_dkl_task, runs)
    for k, (n, latency) in enumerate(results):
        scene, acquisition, seed, _ = runs[k]
        counts[acquisition].append(n)
        at = k // len(acquisitions)
        print(
            f"# {scene.recipe.name} seed {seed} {acquisition}: {n} "
            f"(random {base['random'][at]}, raster {base['raster'][at]}; "
            f"median step {latency:.3f} s)",
            flush=True,
        )
    if pool is not None:
        pool.shutdown()
    for acquisition in acquisitions:
        print(f"{acquisition}_measurements_to_90pct: {np.median(counts[acquisition]):.0f}")
    print(f"random_measurements_to_90pct: {np.median(base['random']):.0f}")
    print(f"raster_measurements_to_90pct: {np.median(base['raster']):.0f}")
    random_counts = np.array(base["random"])
    for acquisition in acquisitions:
        ratio = float(np.median(np.array(counts[acquisition]) / random_counts))
        print(f"{acquisition}_measurements_to_90pct_vs_random: {ratio:.3f}")
    # The best by its median ratio to random over scenes x seeds (the figure asked for).
    best = min(acquisitions, key=lambda a: float(np.median(np.array(counts[a]) / random_counts)))
    ratios = np.array(counts[best]) / random_counts
    raster = np.array(counts[best]) / np.array(base["raster"])
    print(f"dkl_best_acquisition: {best}")
    print(f"dkl_measurements_to_90pct_vs_random: {np.median(ratios):.3f}")
    print(f"dkl_measurements_to_90pct_vs_raster: {np.median(raster):.3f}")
    bench_latency(made[0])
    if args.quick or args.gpax_scenes == 0:
        why = "--quick" if args.quick else "--gpax-scenes 0"
        print(f"dkl_vs_gpax_measurements_ratio: not run ({why})")
    else:
        # Against our UCB, gpax's acquisition function, when it ran (else the best).
        mine = "ucb" if "ucb" in acquisitions else best
        index = {(scene.recipe.name, seed): k for k, (scene, seed) in enumerate(pairs)}

        def counted(scene: Scene, seed: int) -> int:
            k = index.get((scene.recipe.name, seed))
            return dkl_count(scene, mine, seed, args.cap)[0] if k is None else counts[mine][k]

        compare_gpax(args, made, counted)
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
