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
* ``dkl_vs_gpax_measurements_ratio``: median of DKL's over gpax viDKL's measurements to 90 %
  on the same scenes and seeds (target <= 1), gpax in its own virtual environment made here
  (gpax needs an older JAX/numpyro); when it cannot be made or run, the line says why.
* ``dkl_step_latency_s``: one step (refit + predict + acquire) at 200 measured points over
  the 16384 candidates of a 128 x 128 scene (the median of the steps at 198, 199 and 200
  points; target <= 1 s on this 2-core machine).

Full run: 3 scenes (128 x 128 probe positions; made by 4D-STEM virtual experiments and
cached in ``--cache``) x 10 seeds. ``--quick``: one 32 x 32 scene, one seed, UCB only, no gpax.
Run from the repository root: ``python bench/rehearsal.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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
GPAX_PINS = (
    "gpax==0.1.9", "jax==0.4.30", "jaxlib==0.4.30", "numpyro==0.15.3", "dm-haiku==0.0.12",
    "flax==0.8.5", "numpy<2",
)  # fmt: skip


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


GPAX_RUNNER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import gpax
    data = np.load(sys.argv[1])
    features, values, top = data["features"], data["values"], data["top"]
    order, budget, seed_points = data["order"], int(data["budget"]), int(data["seed_points"])
    radius = float(data["radius"])
    nx, ny = top.shape
    covered = np.zeros_like(top)
    reach = int(radius)
    def add(index):
        ix, iy = divmod(int(index), ny)
        for dx in range(-reach, reach + 1):
            for dy in range(-reach, reach + 1):
                if dx * dx + dy * dy <= radius * radius + 1e-9:
                    x, y = ix + dx, iy + dy
                    if 0 <= x < nx and 0 <= y < ny and top[x, y]:
                        covered[x, y] = True
        return covered.sum() / top.sum()
    measured = [int(i) for i in order[:seed_points]]
    found = [add(i) for i in measured][-1]
    key1, key2 = gpax.utils.get_keys(int(data["seed"]))
    started = time.time()
    while found < 0.9 and len(measured) < budget:
        model = gpax.viDKL(features.shape[1], 2)
        model.fit(key1, features[measured], values[measured], num_steps=150,
                  progress_bar=False, print_summary=False)
        mean, var = model.predict_in_batches(key2, features, batch_size=4096)
        scores = np.asarray(mean) + 2 * np.sqrt(np.asarray(var))
        scores[measured] = -np.inf
        chosen = int(np.argmax(scores))
        measured.append(chosen)
        found = add(chosen)
    steps = max(1, len(measured) - seed_points)
    print(json.dumps({"measurements": len(measured), "found": float(found),
                      "seconds_per_step": (time.time() - started) / steps}))
    """
)


def gpax_python(cache: Path) -> tuple[Path | None, str]:
    venv = cache / "gpax-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "gpax==0.1.9"], check=True, capture_output=True, timeout=900)
            # gpax 0.1.9 asks for numpyro >= 0.18, whose haiku support is gone: pin back.
            subprocess.run([*pip, *GPAX_PINS[1:]], check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            return None, f"cannot install gpax: {exc} {detail.decode(errors='replace')[-300:]}"
    probe = subprocess.run(
        [str(python), "-c", "import gpax; gpax.viDKL"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return None, f"gpax does not import: {probe.stderr.strip().splitlines()[-1:]}"
    return python, "ok"


def gpax_count(python: Path, scene: Scene, seed: int, cap: int, timeout: float) -> int | None:
    top = top_region(scene.truth(PROPERTY), TOP)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "scene.npz"
        np.savez(
            data, features=image_patches(scene.haadf, PATCH),
            values=scene.measured(PROPERTY, DOSE, seed).reshape(-1), top=top,
            order=strategy_order("random", scene.shape, seed), budget=cap,
            seed_points=SEED_POINTS, radius=RADIUS, seed=seed,
        )  # fmt: skip
        runner = Path(folder) / "runner.py"
        runner.write_text(GPAX_RUNNER)
        try:
            done = subprocess.run(
                [str(python), str(runner), str(data)], capture_output=True, text=True,
                check=True, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            print(f"# gpax seed {seed}: not done within {timeout:.0f} s")
            return None
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"# gpax seed {seed}: {answer}")
    return int(answer["measurements"]) if answer["found"] >= 0.9 else scene.haadf.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cap", type=int, default=1500, help="most DKL measurements a run")
    parser.add_argument("--gpax-seeds", type=int, default=3, help="seeds per scene for gpax")
    parser.add_argument("--gpax-timeout", type=float, default=1800, help="[s] per gpax run")
    parser.add_argument("--gpax-scenes", type=int, default=3, help="scenes gpax runs on")
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
    acquisitions = ["ucb"] if args.quick else args.acquisitions.split(",")
    counts: dict[str, list[int]] = {a: [] for a in acquisitions}
    base: dict[str, list[int]] = {"random": [], "raster": []}
    tasks = [(scene, seed) for scene in made for seed in range(seeds)]
    for scene, seed in tasks:
        for strategy, n in baseline_counts(scene, seed).items():
            base[strategy].append(n)
    runs = [(scene, a, seed, args.cap) for scene, seed in tasks for a in acquisitions]
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
        python, why = gpax_python(args.cache)
        if python is None:
            print(f"dkl_vs_gpax_measurements_ratio: not run ({why})")
        else:
            ours, theirs = [], []
            for k, scene in enumerate(made[: args.gpax_scenes]):
                for seed in range(min(seeds, args.gpax_seeds)):
                    n = gpax_count(python, scene, seed, args.cap, args.gpax_timeout)
                    if n is not None:
                        theirs.append(n)
                        ours.append(counts[best][k * seeds + seed])
            if theirs:
                ratio = np.median(ours) / np.median(theirs)
                print(f"dkl_vs_gpax_measurements_ratio: {ratio:.3f}")
                print(f"# gpax runs: {len(theirs)}, measurements {theirs}; DKL {ours}")
            else:
                print("dkl_vs_gpax_measurements_ratio: not run (no gpax run finished in time)")
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
