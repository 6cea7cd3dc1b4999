"""Schedules: gradual unfreezing, per-block rates, warm-up/cosine, the learning-rate finder."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetunekit as ftk
from finetunekit import caching, schedules, structure
from finetunekit.recipe import FINETUNE, HEAD, Phase, Recipe

SHAPE = (32, 32, 3)


def _tuner(**kwargs: object) -> ftk.FineTuner:
    arguments: dict = dict(num_classes=3, weights=None, input_shape=SHAPE, alpha=0.35, seed=0)
    arguments.update(kwargs)
    return ftk.FineTuner("mobilenet_v2", **arguments)


def _images(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, *SHAPE)).astype("float32"), rng.integers(0, 3, n)


def _values(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.weights]


# -- gradual unfreezing --------------------------------------------------------------------


def test_a_tuple_unfreezes_in_stages_and_an_int_keeps_its_meaning() -> None:
    head, *stages = Recipe(finetune_epochs=3, unfreeze=(1, 2, 4)).phases()
    assert head.name == HEAD
    assert [(p.name, p.unfreeze, p.epochs) for p in stages] == [
        ("finetune-1", 1, 3),
        ("finetune-2", 2, 3),
        ("finetune-3", 4, 3),
    ]
    assert [p.name for p in Recipe(unfreeze=2).phases()] == [HEAD, FINETUNE]
    assert Recipe(unfreeze=(3,)).unfreeze == 3  # one stage is the int
    assert Recipe(unfreeze=[1, 2]).unfreeze == (1, 2)


def test_each_stage_trains_from_its_own_cut_of_one_pass(monkeypatch) -> None:
    passes: list[int] = []
    original = caching.FeatureCache.__init__

    def counting(self, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(len(prefix.outputs))
        original(self, prefix, *args, **kwargs)

    monkeypatch.setattr(caching.FeatureCache, "__init__", counting)
    x, y = _images()
    tuner = _tuner()
    tuner.load_base()
    blocks = structure.blocks(tuner.base)
    def kernels(block: structure.Block) -> list:
        return [v for layer in block.weighted() for v in layer.weights]

    before = {b.name: [v.numpy().copy() for v in kernels(b)] for b in blocks[-3:]}
    history = tuner.fit(
        x, y, head_epochs=1, finetune_epochs=1, unfreeze=(1, 2), early_stopping=False,
        finetune_learning_rate=1e-2, verbose=0,
    )
    assert history.phases == [HEAD, "finetune-1", "finetune-2"]
    assert history.unfreeze_epoch == 1
    assert passes == [3]  # one pass over the training images, three stored outputs
    cuts = [r.cut for r in history.reports]
    assert all(r.cached for r in history.reports) and len(set(cuts)) == 3
    assert [row.trainable_blocks for row in history.plan][1:] == [
        (blocks[-1].name,),
        (blocks[-2].name, blocks[-1].name),
    ]
    assert history.plan == tuner.plan(
        head_epochs=1, finetune_epochs=1, unfreeze=(1, 2), early_stopping=False,
        finetune_learning_rate=1e-2,
    )
    # The third block from the top never trained; the second did, in the last stage.
    third, second = blocks[-3], blocks[-2]
    assert all(
        np.array_equal(a, v.numpy())
        for a, v in zip(before[third.name], kernels(third), strict=True)
    )
    moved = [
        not np.array_equal(a, v.numpy())
        for a, v in zip(before[second.name], kernels(second), strict=True)
    ]
    assert moved and all(moved)


# -- per-block learning rates --------------------------------------------------------------


def _block_of(model: keras.Model) -> dict[str, int]:
    """Variable path -> k (1 for the top block), for the base's trainable blocks."""
    found = {}
    trainable = [b for b in reversed(structure.blocks(model)) if any(
        layer.trainable_variables for layer in b.weighted(train_bn=True)
    )]
    for k, block in enumerate(trainable, start=1):
        for layer in block.weighted(train_bn=True):
            for v in layer.trainable_variables:
                found[v.path] = k
    return found


@pytest.mark.parametrize("cache", [False, True])
def test_one_sgd_step_moves_each_block_by_its_rate_times_its_gradient(cache: bool) -> None:
    x, y = _images(16)
    tuner = _tuner(cache=cache)
    tuner.load_base().freeze().add_head(dropout=0.0)
    tuner.compile(optimizer=keras.optimizers.SGD(momentum=0.0))
    rate, decay = 0.1, 0.5
    tuner.unfreeze(3, learning_rate=rate, lr_decay=decay)
    model = tuner.model
    assert isinstance(model.optimizer, keras.optimizers.MultiOptimizer)
    blocks = _block_of(model)
    assert sorted(set(blocks.values())) == [1, 2, 3]
    variables = model.trainable_variables
    start = [v.numpy().copy() for v in variables]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = tape.gradient(loss, variables)
    tuner.train(x, y, epochs=1, batch_size=16, early_stopping=False, verbose=0)
    assert tuner.last_phase.cached is cache
    head_count = 0
    for v, before, g in zip(variables, start, grads, strict=True):
        k = blocks.get(v.path)
        expected_rate = rate if k is None else rate * decay**k
        head_count += k is None
        np.testing.assert_allclose(
            before - v.numpy(), expected_rate * g.numpy(), rtol=2e-3, atol=1e-7,
            err_msg=f"{v.path} (block k={k})",
        )
    assert head_count == 2  # the head's kernel and bias train at the phase's rate


def test_per_block_rates_survive_save_and_load_model(tmp_path) -> None:
    x, y = _images()
    tuner = _tuner()
    history = tuner.fit(
        x, y, head_epochs=1, finetune_epochs=1, unfreeze=2, lr_decay=0.5, verbose=0,
        early_stopping=False,
    )
    rates = dict(history.plan[-1].block_rates)
    assert list(rates.values()) == [pytest.approx(1e-5 * 0.25), pytest.approx(1e-5 * 0.5)]
    optimizer = tuner.model.optimizer
    names = sorted(o.name for o in optimizer.optimizers)
    path = tuner.save(tmp_path / "decay.keras")
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)
    assert sorted(o.name for o in loaded.optimizer.optimizers) == names
    by_name = {o.name: float(o.learning_rate) for o in loaded.optimizer.optimizers}
    assert by_name[schedules.HEAD_OPTIMIZER] == pytest.approx(1e-5)
    assert sorted(v for k, v in by_name.items() if k != "head") == [
        pytest.approx(2.5e-6), pytest.approx(5e-6)
    ]
    for mine, theirs in zip(optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    loaded.fit(x, y, epochs=1, verbose=0)  # the reloaded optimizer keeps training


def test_an_optimizer_instance_is_a_template_for_every_block() -> None:
    x, y = _images()
    tuner = _tuner()
    tuner.load_base().freeze().add_head().compile(optimizer=keras.optimizers.SGD(momentum=0.9))
    tuner.fit(x, y, head_epochs=1, finetune_epochs=1, lr_decay=0.5, verbose=0)
    inner = tuner.model.optimizer.optimizers
    assert len(inner) == 3 and all(isinstance(o, keras.optimizers.SGD) for o in inner)
    assert all(o.momentum == 0.9 for o in inner)


def test_lr_decay_under_mixed_float16(weights_035: object) -> None:
    # Keras wraps the MultiOptimizer in a LossScaleOptimizer: the rates are read through it.
    # Real weights: a random base's activations overflow float16.
    x, y = _images()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        tuner = _tuner(weights=weights_035)
        history = tuner.fit(x, y, head_epochs=1, finetune_epochs=1, lr_decay=0.5, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(tuner.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["learning_rate"]).all()
    assert schedules.current_rate(tuner.model.optimizer) > 0


# -- rates over time ------------------------------------------------------------------------


def test_warmup_then_cosine_and_warmup_alone() -> None:
    phase = Phase("head", 10, 0, "block", False, 1e-2, False, 0, warmup=2.0, cosine=True)
    rate = schedules.rate_schedule(1e-2, phase, steps_per_epoch=5)
    assert float(rate(0)) == 0.0
    assert float(rate(5)) == pytest.approx(5e-3)  # half-way up the warm-up
    assert float(rate(10)) == pytest.approx(1e-2)
    assert float(rate(30)) == pytest.approx(5e-3, rel=1e-3)  # half-way down the cosine
    assert float(rate(50)) == pytest.approx(0.0, abs=1e-9)
    flat = schedules.rate_schedule(1e-2, Phase("head", 10, 0, "block", False, 1e-2, False, 0,
                                               warmup=2.0), steps_per_epoch=5)
    assert float(flat(40)) == pytest.approx(1e-2)
    constant = Phase("h", 3, 0, "block", False, 1e-2, False, 0)
    assert schedules.rate_schedule(1e-2, constant, 5) == 1e-2
    assert [p.warmup for p in Recipe(head_epochs=10, finetune_epochs=4, warmup=0.5).phases()] == [
        5.0, 2.0
    ]


@pytest.mark.parametrize("cache", [True, False])
def test_the_rate_of_each_epoch_is_in_the_history(cache: bool) -> None:
    x, y = _images(64)  # 2 batches of 32 per epoch
    history = _tuner(cache=cache).fit(
        x, y, head_epochs=4, finetune_epochs=0, warmup=2, cosine=True, early_stopping=False,
        head_learning_rate=1e-2, verbose=0,
    )
    expected = [0.0, 5e-3, 1e-2, 5e-3]  # at the start of each epoch: up for 2, down over 2
    assert history.history["learning_rate"] == pytest.approx(expected, abs=1e-7)
    assert "warmup 2, cosine" in str(history.plan)
    assert history.reports[0].cached is cache


def test_compile_for_accepts_a_schedule() -> None:
    model = ftk.add_head(ftk.load_base("mobilenet_v2", weights=None, input_shape=SHAPE,
                                       alpha=0.35), 3)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 10, warmup_target=1e-3, warmup_steps=2)
    ftk.compile_for(model, learning_rate=schedule, optimizer="sgd")
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0)
    model.fit(*_images(64), batch_size=32, epochs=1, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)


# -- the learning-rate finder ---------------------------------------------------------------


def test_find_lr_restores_weights_and_optimizer_state_exactly(tmp_path) -> None:
    x, y = _images()
    tuner = _tuner()
    tuner.fit(x, y, head_epochs=1, finetune_epochs=1, verbose=0, early_stopping=False)
    optimizer = tuner.model.optimizer
    weights = _values(tuner.model)
    state = [v.numpy().copy() for v in optimizer.variables]
    flags = [layer.trainable for layer in structure.leaf_layers(tuner.base)]
    for phase in ("head", "finetune"):
        found = ftk.find_lr(tuner, x, y, phase=phase, steps=40, start=1e-5, end=100.0)
        assert found.cached and found.phase == phase
        assert 3 <= len(found.rates) <= 40
        assert list(found.rates) == sorted(found.rates) and found.rates[0] == pytest.approx(1e-5)
        assert set(found.suggestions) == {"valley", "steep", "minimum"}
        assert found.rates[0] / 10 <= found.suggestion <= found.rates[-1]
    assert tuner.model.optimizer is optimizer
    for before, after in zip(weights, _values(tuner.model), strict=True):
        np.testing.assert_array_equal(before, after)
    for before, variable in zip(state, optimizer.variables, strict=True):
        np.testing.assert_array_equal(before, variable.numpy())
    assert [layer.trainable for layer in structure.leaf_layers(tuner.base)] == flags
    assert found.plot(tmp_path / "lr.png").stat().st_size > 1000


def test_find_lr_uses_the_loss_of_each_batch_and_stops_on_divergence() -> None:
    x, y = _images()
    found = ftk.find_lr(_tuner(), x, y, start=1e-3, end=1e6, steps=60)
    assert len(found.rates) < 60  # a rate of 1e6 diverges long before the end
    assert found.losses[-1] > 4 * min(found.losses[:-1])
    # Per-batch losses vary by batch; a running mean would change ever less.
    assert np.std(np.diff(found.raw_losses[:10])) > 0


def test_fit_can_find_the_head_rate() -> None:
    x, y = _images()
    tuner = _tuner()
    history = tuner.fit(x, y, head_epochs=1, finetune_epochs=0, head_learning_rate="find",
                        verbose=0)
    rate = history.plan[0].learning_rate
    assert rate != Recipe().head_learning_rate and 1e-8 < rate < 10
    assert tuner._recipe is not None and tuner._recipe.head_learning_rate == rate


def test_a_plan_that_asks_find_shows_find_for_the_head_rate() -> None:
    # It showed the default rate, which fit does not train at.
    planned = _tuner().plan(head_epochs=1, finetune_epochs=1, head_learning_rate="find")
    head, finetune = planned
    assert np.isnan(head.learning_rate) and not np.isnan(finetune.learning_rate)
    assert str(planned).splitlines()[1].split()[2] == "find"


def test_the_suggestions_of_a_known_curve() -> None:
    from finetunekit.lr_finder import suggest

    rates = np.geomspace(1e-6, 1.0, 61)
    # Flat, then falling fastest at 1e-3, lowest at 1e-1, then diverging.
    loss = 2.0 - np.tanh(2 * (np.log10(rates) + 3)) - 0.2 * (np.log10(rates) + 1) ** 2 / 25
    loss[np.log10(rates) > -1] += 4 * (np.log10(rates[np.log10(rates) > -1]) + 1)
    found = suggest(list(rates), list(loss))
    assert found["steep"] == pytest.approx(1e-3, rel=0.3)
    assert found["minimum"] == pytest.approx(1e-1 / 10, rel=0.3)
    assert 1e-4 < found["valley"] < 1e-1  # on the falling stretch, before the minimum
