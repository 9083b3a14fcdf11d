"""Rehearsals of autonomous experiments: scenes, the deep-kernel loop's bookkeeping,
reproducibility, baselines and refusals (small scenes: seconds)."""

from __future__ import annotations

import numpy as np
import pytest

import simulations
from simulations import (
    AcquisitionError,
    RehearsalError,
    Scene,
    SceneError,
    SceneRecipe,
    StateV1,
    image_patches,
    make_scene,
    rehearse,
    strategy_order,
    top_region,
)

HOT = (17, 23)
SIDE = 32


def _blob(shape: tuple[int, int], centre: tuple[int, int], sigma: float) -> np.ndarray:
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def hot_spot_scene() -> Scene:
    """Atom-like blobs on a grid in the overview; the property is large at ONE position,
    where the overview has its one much brighter blob."""
    shape = (SIDE, SIDE)
    haadf = np.zeros(shape)
    for cx in range(3, SIDE, 7):
        for cy in range(2, SIDE, 7):
            haadf += _blob(shape, (cx, cy), 1.2)
    haadf += 3.0 * _blob(shape, HOT, 1.2)
    com = 0.2 * haadf + 5.0 * _blob(shape, HOT, 1.0)
    return Scene(
        recipe=SceneRecipe("hot-spot", positions=SIDE, step=0.3),
        haadf=haadf,
        com_x=com,
        com_y=np.zeros(shape),
        com_spread=np.full(shape, 15.0),
        metal_weight=np.ones(shape),
        dopant_weight=np.zeros(shape),
    )


def test_a_hot_spot_is_found_and_reported_at_exactly_its_position() -> None:
    """A one-position hot spot, over six seeds: most runs find it by learning (5 of 6 here,
    and which seed misses depends on the platform's floating point), well before the random
    order gets there, and every run that finds it reports it at exactly its position."""
    scene = hot_spot_scene()
    found, needed, random_ranks = 0, [], []
    for seed in range(6):
        run = rehearse(
            scene, acquisition="ei", patch=5, budget=120, seed_points=6, seed=seed,
            top_fraction=1 / SIDE**2, found_radius=0.0, target_fraction=1.0,
        )  # fmt: skip
        order = strategy_order("random", scene.shape, seed)
        random_ranks.append(int(np.flatnonzero(order == HOT[0] * SIDE + HOT[1])[0]) + 1)
        if run.stopped != "target":
            assert run.stopped == "budget" and len(run.steps) == 120
            continue
        found += 1
        best = max(run.steps, key=lambda s: s.measured)
        assert (best.ix, best.iy) == HOT
        assert best.index == HOT[0] * SIDE + HOT[1]
        assert (best.x, best.y) == pytest.approx(((HOT[0] + 0.5) * 0.3, (HOT[1] + 0.5) * 0.3))
        assert best.measured == pytest.approx(scene.truth("com")[HOT])
        n = run.measurements_to(1.0)
        assert n is not None
        needed.append(n)
    assert found >= 4, f"the hot spot was found in {found} of 6 runs"
    # The loop found it by learning, well before the random order gets there.
    assert float(np.median(needed)) < 0.5 * float(np.median(random_ranks)), (needed, random_ranks)


def test_the_measured_point_is_the_chosen_one() -> None:
    scene = hot_spot_scene()
    asked: list[tuple[int, int]] = []
    truth = scene.truth("com")

    def measure(ix: int, iy: int) -> float:
        asked.append((ix, iy))
        return float(truth[ix, iy])

    run = rehearse(scene, acquisition="ucb", patch=5, budget=25, seed_points=5, measure=measure)
    assert asked == [(s.ix, s.iy) for s in run.steps]
    for step in run.steps:
        assert divmod(step.index, SIDE) == (step.ix, step.iy)
        assert step.measured == truth[step.ix, step.iy]
    # Each model step predicted at the chosen position, which was not measured before.
    indices = [s.index for s in run.steps]
    assert len(set(indices)) == len(indices)
    model_steps = run.steps[5:]
    assert all(np.isfinite(s.predicted) and s.uncertainty > 0 for s in model_steps)


def test_the_same_seed_gives_the_same_points_and_another_seed_others() -> None:
    scene = hot_spot_scene()
    kwargs = {"acquisition": "thompson", "patch": 5, "budget": 20, "seed_points": 5, "dose": 1e4}
    first = rehearse(scene, seed=7, **kwargs)  # type: ignore[arg-type]
    again = rehearse(scene, seed=7, **kwargs)  # type: ignore[arg-type]
    other = rehearse(scene, seed=8, **kwargs)  # type: ignore[arg-type]
    assert [s.index for s in first.steps] == [s.index for s in again.steps]
    assert [s.measured for s in first.steps] == [s.measured for s in again.steps]
    assert [s.index for s in first.steps] != [s.index for s in other.steps]


@pytest.mark.parametrize("acquisition", sorted(simulations.ACQUISITIONS))
def test_every_acquisition_function_runs_with_a_distance_penalty(acquisition: str) -> None:
    run = rehearse(
        hot_spot_scene(), acquisition=acquisition, patch=5, budget=14, seed_points=4,
        distance_penalty=1.0, dose=1e5,
    )  # fmt: skip
    assert len(run.steps) == 14 and run.stopped == "budget"
    assert run.mean_map is not None and run.mean_map.shape == (SIDE, SIDE)


def test_an_uncertainty_level_stops_the_loop() -> None:
    run = rehearse(hot_spot_scene(), patch=5, budget=50, seed_points=4, uncertainty_stop=1e6)
    assert run.stopped == "uncertainty" and len(run.steps) == 4


def test_baselines_measure_in_their_order() -> None:
    scene = hot_spot_scene()
    random_run = rehearse(scene, strategy="random", budget=40, seed=2)
    assert [s.index for s in random_run.steps] == list(strategy_order("random", (32, 32), 2)[:40])
    raster = strategy_order("raster", (32, 32), 0)
    assert sorted(raster) == list(range(32 * 32))
    # Coarse first: the first grid is every 8th position of every 8th row.
    assert list(raster[:16]) == [ix * 32 + iy for ix in range(0, 32, 8) for iy in range(0, 32, 8)]
    assert np.isfinite(random_run.steps[-1].rmse)


def test_top_region_and_patches_keep_positions() -> None:
    image = np.arange(12.0).reshape(3, 4)
    top = top_region(image, 0.25)
    assert top.sum() == 3 and top[2].sum() == 3
    patches = image_patches(image, 3)
    # Row k is the window centred on pixel divmod(k, 4).
    centre = patches[:, 4]
    assert np.allclose(centre * image.std() + image.mean(), image.reshape(-1))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"budget": 5, "seed_points": 10}, RehearsalError, "below the 10 seed points"),
        ({"patch": 40}, AcquisitionError, "larger than the scene"),
        ({"acquisition": "greedy"}, AcquisitionError, "unknown acquisition function 'greedy'"),
        ({"prop": "strain"}, SceneError, "unknown property 'strain'"),
    ],
)
def test_bad_inputs_are_refused_with_a_message(
    kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        rehearse(hot_spot_scene(), **kwargs)  # type: ignore[arg-type]


def test_a_small_scene_is_made_by_virtual_experiments_and_cached(tmp_path: object) -> None:
    recipe = SceneRecipe("tiny", positions=12, step=0.3, dopants=1, vacancies=1, tile=12)
    state = StateV1(energy=80e3, convergence_semiangle=30.0)
    scene = make_scene(recipe, state, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert scene.shape == (12, 12)
    com = scene.truth("com")
    assert np.all(np.isfinite(com)) and com.max() > 0.5  # mrad: atoms deflect the beam
    # The pattern's spread per axis is about half the convergence semi-angle (a full disc).
    assert 10 < float(np.median(scene.com_spread)) < 20
    ratio = scene.truth("edge_ratio")
    assert ratio.min() >= 0 and ratio.max() > 0.5  # the one W dopant
    # A measurement's noise shrinks with dose as 1/sqrt(dose).
    low = np.std(scene.measured("com", 1e3, 0) - com)
    high = np.std(scene.measured("com", 1e5, 0) - com)
    assert 5 < low / high < 20
    cached = make_scene(recipe, state, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert cached.parameters.get("cached") is True
    assert np.array_equal(cached.com_x, scene.com_x)
    assert np.array_equal(cached.haadf, scene.haadf)


def test_the_written_out_loss_is_pyros_marginal_likelihood() -> None:
    import math

    import pyro
    import torch

    features = image_patches(hot_spot_scene().haadf, 5)
    with pyro.get_param_store().scope():
        model = simulations.DeepKernelModel(features, simulations.DklSettings(), seed=1)
        rows = np.arange(0, 1024, 37)
        model.fit(rows, np.sin(rows / 50.0))
        ours = float(model.loss().detach())
        elbo = pyro.infer.Trace_ELBO().differentiable_loss(model.gp.model, model.gp.guide)
        theirs = float(elbo.detach())
    assert theirs == pytest.approx(ours + len(rows) / 2 * math.log(2 * math.pi), rel=1e-9)
    assert torch.get_num_threads() >= 1


def test_the_kept_posterior_is_the_one_computed_from_scratch() -> None:
    """Between refits observe() conditions on each new point by a rank-one update: after many
    such updates its mean and sd equal a fresh exact prediction with the same network and
    kernel, and a refit happens only once the points grew by refit_fraction."""
    import pyro

    rng = np.random.default_rng(3)
    image = rng.normal(size=(48, 48)).cumsum(axis=0).cumsum(axis=1)
    truth = np.sin(image / 15.0).reshape(-1)
    order = rng.permutation(image.size)
    settings = simulations.DklSettings(refit_fraction=0.25, refit_below=0)
    with pyro.get_param_store().scope():
        model = simulations.DeepKernelModel(image_patches(image, 6), settings, seed=0)
        fits = []
        for n in range(10, 120):
            rows = order[:n]
            mean, sd = model.observe(rows, truth[rows])
            fits.append(model._fitted_at)
        fresh_mean, fresh_sd = model.predict()
    assert len(set(fits)) < 20  # refits at 10, 13, 17, ... not at every step
    assert fits[-1] < 119  # the last points came in by updates
    assert np.abs(mean - fresh_mean).max() < 1e-3 * np.abs(fresh_mean).max()
    assert np.abs(sd - fresh_sd).max() < 1e-3 * fresh_sd.max()
    with pytest.raises(simulations.AcquisitionError, match="in order"):
        model.observe(order[1:5], truth[order[1:5]])


def test_the_committed_rehearsal_schema_is_current() -> None:
    from simulations._spec_schemas import stale_files

    assert stale_files() == [], "run `python -m simulations._spec_schemas`"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"budget": 5, "seed_points": 10}, "below the 10 seed points"),
        ({"patch": 20, "positions": 16}, "larger than the scene"),
        ({"acquisition": "greedy"}, "unknown acquisition function 'greedy'"),
        ({"scene": "moon"}, "unknown scene 'moon'"),
    ],
)
def test_a_rehearsal_spec_refuses_bad_input(fields: dict[str, object], words: str) -> None:
    document = {"state": {"energy": 80e3, "convergence_semiangle": 30.0}, **fields}
    with pytest.raises(ValueError, match=words):
        simulations.RehearsalSpecV1.model_validate(document)
