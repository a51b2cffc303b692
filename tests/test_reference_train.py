"""The training driver of the reference: short fixed-seed trainings, checkpoints, exact resume, plots.

Every training here is step-bounded and small (a few hundred steps on
miniature data and models), pinned to one BLAS thread; the assertions are
on held-out accuracy against chance, never on time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the training reference needs the `reference` extra (Pillow)")
pytest.importorskip("matplotlib", reason="the training reference needs the `reference` extra (matplotlib)")
pytest.importorskip("sklearn", reason="the digit tasks need the `reference` extra (scikit-learn)")

import ace_core  # noqa: E402
from ace_core.reference import checkpoint as ckpt  # noqa: E402
from ace_core.reference import tasks  # noqa: E402
from ace_core.reference.train import TrainConfig, learning_rate, restore, train  # noqa: E402

# Miniature versions of the tasks: small canvases and models that learn in a few hundred steps.
TINY = {
    "digits": dict(
        task="digits",
        data=dict(height=16, width=64, min_length=2, max_length=4),
        model=dict(channels=[8, 16], hidden=32, head="linear"),
        lr=1e-2,
    ),
    "crnn": dict(
        task="crnn",
        data=dict(height=16, width=48, min_length=1, max_length=3),
        model=dict(channels=[8, 16], hidden=16, head="bilstm"),
        lr=1e-2,
    ),
    "fcn": dict(
        task="fcn",
        data=dict(canvas=16, glyph=8, min_objects=1, max_objects=2, classes=3),
        model=dict(channels=[8, 16, 16]),
        lr=1e-2,
    ),
    "count": dict(
        task="count",
        data=dict(canvas=24, classes=2, max_per_class=3, max_total=6, sizes=(4, 6)),
        model=dict(channels=[8, 16, 16]),
        lr=1e-2,
    ),
}


def tiny(name: str, **overrides) -> TrainConfig:
    options = {
        "eval_size": 200,
        "warmup": 0,
        "schedule": "constant",
        "log_every": 10,
        "backend": "numpy",
        **TINY[name],
        **overrides,
    }
    return TrainConfig(**options)


def quiet(line: str) -> None:
    pass


def state_of(model) -> dict[str, np.ndarray]:
    return model.state_dict()


# --------------------------------------------------------------------------- learning beats chance


def test_fcn_learns_the_2d_toy_far_above_chance():
    result = train(tiny("fcn", steps=300, eval_every=300), threads=1, log=quiet)
    # Chance: the most frequent multiset of 1-2 objects of 3 classes is ~1/6 of the canvases.
    heldout = result.dataset.heldout(200, seed=0)
    bags = Counter(tuple(x) for x in tasks.label_lists(tasks.get_task("fcn"), heldout))
    chance = max(bags.values()) / 200
    assert chance < 0.25
    assert result.final["bag_accuracy"] >= max(chance + 0.4, 0.6), result.final


def test_crnn_learns_digit_strings_far_above_chance():
    result = train(tiny("digits", steps=300, eval_every=300), threads=1, log=quiet)
    # Chance of reading a 2-4 digit string exactly is at most 1/100.
    assert result.final["sequence_accuracy"] >= 0.5, result.final
    assert result.final["cer"] <= 0.2, result.final
    # Both readouts are scored: greedy and count-ordered (the recipe's).
    assert result.final["ordered_sequence_accuracy"] >= 0.5, result.final
    assert result.final["ordered_cer"] <= 0.2, result.final
    assert all("ordered_sequence_accuracy" in entry for entry in result.history["eval"])


def test_prior_blank_bias_removes_the_plateau():
    # The same tiny CRNN, data and steps; only the blank's initial output bias differs.
    accuracy = {}
    for bias in (0.0, "prior"):
        config = tiny("digits", steps=200, eval_every=200)
        config.model = {**config.model, "init_blank_bias": bias}
        accuracy[bias] = train(config, threads=1, log=quiet).final["sequence_accuracy"]
    assert accuracy["prior"] >= accuracy[0.0] + 0.25, accuracy


@pytest.mark.parametrize("name", ["crnn", "fcn", "count"])
def test_prior_blank_bias_starts_at_the_label_mix(name):
    task = tasks.get_task(name)
    dataset = tasks.build_dataset(task, TINY[name]["data"])
    model = tasks.build_model(task, dataset, {**TINY[name]["model"], "init_blank_bias": "prior"})
    batch = dataset.heldout(64, seed=9)
    logits, _ = model.forward(batch.images, train=False)
    logits = np.asarray(logits, dtype=np.float64).reshape(64, -1, dataset.num_classes)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    steps = logits.shape[1]
    blank_share = 1 - np.mean([len(x) for x in tasks.label_lists(task, batch)]) / steps
    assert probs[..., 0].mean() == pytest.approx(blank_share, abs=0.05)
    others = probs[..., 1:].mean(axis=(0, 1))
    assert np.all(np.abs(others - (1 - blank_share) / (dataset.num_classes - 1)) < 0.05)


def test_counting_beats_the_always_the_mode_baseline():
    result = train(tiny("count", steps=300, eval_every=300), threads=1, log=quiet)
    dataset = result.dataset
    truth = np.asarray(dataset.heldout(200, seed=0).object_counts)
    train_counts = np.asarray(dataset.batch(np.random.default_rng(1), 1000).object_counts)
    mode = np.array([np.bincount(c).argmax() for c in train_counts.T])
    baseline = ace_core.counting_errors(np.broadcast_to(mode, truth.shape), truth, classes=[1, 2])
    assert result.final["m_rel_rmse"] <= 0.5 * baseline.mean_rel_rmse, (result.final, baseline)


# --------------------------------------------------------------------------- the loss and the labels


def test_counts_follow_the_labels_and_the_output_size():
    task = tasks.get_task("fcn")
    dataset = tasks.build_dataset(task, TINY["fcn"]["data"])
    batch = dataset.batch(np.random.default_rng(0), 5)
    logits = np.zeros((5, 4, 4, dataset.num_classes), dtype=np.float32)
    counts = tasks.batch_counts(task, batch, logits, xp=np, device="cpu")
    assert np.array_equal(counts[:, 1:], np.asarray(batch.object_counts)[:, 1:])
    assert np.array_equal(counts.sum(axis=1), np.full(5, 16))

    task = tasks.get_task("crnn")
    dataset = tasks.build_dataset(task, TINY["crnn"]["data"])
    batch = dataset.batch(np.random.default_rng(0), 5)
    logits = np.zeros((5, 12, dataset.num_classes), dtype=np.float32)
    counts = tasks.batch_counts(task, batch, logits, xp=np, device="cpu")
    for row, text in zip(counts, batch.texts, strict=True):
        expected = Counter(dataset.encode(text))
        assert {k: int(row[k]) for k in range(1, len(row)) if row[k]} == dict(expected)
        assert row[0] == 12 - len(text)


def test_shuffled_labels_keep_the_multiset():
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 9, size=(50, 6))
    lengths = rng.integers(1, 7, size=50)
    targets = np.where(np.arange(6) < lengths[:, None], targets, 0)
    shuffled = tasks.shuffle_targets(targets, lengths, 1.0, np.random.default_rng(1))
    assert not np.array_equal(shuffled, targets)
    for a, b, n in zip(targets, shuffled, lengths, strict=True):
        assert sorted(a[:n]) == sorted(b[:n]) and np.all(b[n:] == 0)
    assert np.array_equal(tasks.shuffle_targets(targets, lengths, 0.0, np.random.default_rng(1)), targets)


def test_learning_rate_schedule():
    config = TrainConfig(task="fcn", steps=1000, lr=1.0, warmup=10, schedule="cosine").resolved()
    rates = [learning_rate(config, s) for s in range(1000)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # decays monotonically
    assert rates[-1] == pytest.approx(0.05, abs=1e-4)
    constant = TrainConfig(task="fcn", steps=100, lr=0.5, warmup=0, schedule="constant").resolved()
    assert {learning_rate(constant, s) for s in range(100)} == {0.5}


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(task="nope").resolved()
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(task="fcn", steps=0).resolved()
    with pytest.raises(ValueError, match="shuffle_labels"):
        TrainConfig(task="crnn", shuffle_labels=2.0).resolved()
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"task": "crnn", "bogus": 1})


def test_regression_loss_trains_and_is_recorded(tmp_path):
    result = train(tiny("fcn", steps=4, eval_every=4, loss="regression", eval_size=20), tmp_path, log=quiet)
    assert result.config.loss == "regression"
    assert np.isfinite(result.history["train"]["loss"]).all()


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    saved = ckpt.Checkpoint(
        step=7,
        model={"conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a/b": np.ones(2)},
        optimizer={"step": np.int64(7), "m.conv1.weight": np.zeros((2, 3), np.float32)},
        rng_state=np.random.default_rng(3).bit_generator.state,
        config={"task": "crnn"},
        history={"eval": [{"step": 5, "loss": float("nan")}]},
    )
    ckpt.save_checkpoint(tmp_path, saved)
    back = ckpt.load_checkpoint(tmp_path)
    assert back.step == 7 and back.config == {"task": "crnn"}
    assert np.isnan(back.history["eval"][0]["loss"])
    for name, value in saved.model.items():
        assert back.model[name].dtype == value.dtype and np.array_equal(back.model[name], value)
    assert np.array_equal(back.optimizer["m.conv1.weight"], saved.optimizer["m.conv1.weight"])
    generator = np.random.default_rng()
    generator.bit_generator.state = back.rng_state
    assert generator.integers(1 << 30) == np.random.default_rng(3).integers(1 << 30)
    with np.load(tmp_path / ckpt.CHECKPOINT_FILE, allow_pickle=False) as archive:  # no pickled objects
        assert "meta" in archive.files


def _no_temporaries(directory: Path) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers


def test_a_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, ckpt.Checkpoint(step=1, model={"w": np.ones(3)}))

    def broken_savez(file, **arrays):  # dies half way through serialising
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, ckpt.Checkpoint(step=2, model={"w": np.zeros(3)}))
    back = ckpt.load_checkpoint(tmp_path)
    assert back.step == 1 and np.array_equal(back.model["w"], np.ones(3))
    _no_temporaries(tmp_path)


def test_a_crash_before_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, ckpt.Checkpoint(step=1, model={"w": np.ones(3)}))
    written = []

    def write(handle):
        handle.write(b"x" * 100)
        written.append(True)

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies between the data and the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(tmp_path / ckpt.CHECKPOINT_FILE, write)
    assert written
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).step == 1
    _no_temporaries(tmp_path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    np.savez(tmp_path / "checkpoint.npz", w=np.ones(2))
    with pytest.raises(ValueError, match="not an ace_core training checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("name", ["crnn", "fcn"])
def test_resume_is_bit_exact(tmp_path, name):
    # crnn: with half the labels shuffled, so that the shuffling stream is restored too; fcn: Adadelta.
    extra = {"shuffle_labels": 0.5} if name == "crnn" else {"optimizer": "adadelta", "lr": 1.0}
    straight = train(tiny(name, steps=12, eval_every=6, eval_size=10, **extra), tmp_path / "a", log=quiet)
    first = train(tiny(name, steps=6, eval_every=6, eval_size=10, **extra), tmp_path / "b", log=quiet)
    assert first.steps == 6
    resumed = train(
        tiny(name, steps=12, eval_every=6, eval_size=10, **extra), tmp_path / "b", resume=True, log=quiet
    )
    assert resumed.steps == 12
    a, b = state_of(straight.model), state_of(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    saved_a = ckpt.load_checkpoint(tmp_path / "a")
    saved_b = ckpt.load_checkpoint(tmp_path / "b")
    assert saved_a.rng_state == saved_b.rng_state
    for key, value in saved_a.optimizer.items():
        assert np.array_equal(value, saved_b.optimizer[key]), key
    assert [row["step"] for row in saved_b.history["eval"]] == [6, 12]


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    config = tiny("fcn", steps=20, eval_every=20, checkpoint_every=5, eval_size=10, log_every=1)
    straight = train(config, tmp_path / "straight", log=quiet)

    def interrupt_at_12(line: str) -> None:
        if line.startswith("step 12/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", log=interrupt_at_12)
    assert ckpt.load_checkpoint(tmp_path / "run").step == 10  # steps 11 and 12 are lost, nothing else
    resumed = train(config, tmp_path / "run", resume=True, log=quiet)
    for key, value in state_of(straight.model).items():
        assert np.array_equal(value, state_of(resumed.model)[key]), key


def test_run_directory_contents_and_restore(tmp_path):
    result = train(tiny("fcn", steps=6, eval_every=3, eval_size=8), tmp_path, log=quiet)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "checkpoint.npz",
        "config.json",
        "metrics.json",
        "learning_curves.png",
        "prediction_map.png",
    } <= names
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["step"] for row in metrics["eval"]] == [3, 6]
    assert metrics["train"]["step"][-1] == 6 and len(metrics["train"]["loss_minus_floor"]) == 1
    for row in metrics["eval"]:
        assert {"bag_accuracy", "precision", "recall", "loss", "loss_minus_floor"} <= set(row)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["task"] == "fcn" and config["model_config"]["model"] == "FCN"
    _, model, _, saved = restore(tmp_path, backend="numpy")
    assert saved.step == 6
    images = result.dataset.heldout(3, seed=5).images
    expected, _ = result.model.forward(images, train=False)
    actual, _ = model.forward(images, train=False)
    assert np.array_equal(expected, actual)


def test_plots_are_small_pngs(tmp_path):
    from PIL import Image

    train(tiny("count", steps=4, eval_every=2, eval_size=8), tmp_path, log=quiet)
    for name in ("learning_curves.png", "prediction_map.png"):
        path = tmp_path / name
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100
        assert path.stat().st_size < 100_000


def test_progress_lines_report_the_loss_above_its_floor_and_throughput(tmp_path):
    lines: list[str] = []
    train(tiny("fcn", steps=4, eval_every=4, eval_size=8, log_every=2), None, log=lines.append)
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 2
    assert all("loss-floor" in line and "img/s" in line and "ms/step" in line for line in progress)
    assert any(line.startswith("eval step 4: bag accuracy") for line in lines)


def test_eval_loss_is_never_below_the_entropy_floor():
    result = train(tiny("crnn", steps=3, eval_every=3, eval_size=30), None, log=quiet)
    assert result.final["loss_minus_floor"] >= -1e-6
    assert all(gap >= -1e-4 for gap in result.history["train"]["loss_minus_floor"])


def test_experiment_order_gives_identical_weights(tmp_path):
    from ace_core.reference.experiments import reproduce

    summary = reproduce("order", tmp_path, steps=3, eval_size=20)
    assert summary["max_parameter_difference"] == 0.0  # ACE sees only the multiset of the label
    assert (tmp_path / "order.json").is_file() and (tmp_path / "order.png").is_file()
    assert json.loads((tmp_path / "order.json").read_text())["headline"] == summary["headline"]


# --------------------------------------------------------------------------- other array libraries


def _usable(name: str) -> bool:
    from ace_core.bench.backend_table import backend

    return backend(name).usable


@pytest.mark.skipif(not _usable("array_api_strict"), reason="array-api-strict is not installed")
def test_the_loop_assumes_nothing_of_numpy(tmp_path):
    # array-api-strict stands in for CuPy: the same steps, checkpoints and resume, no NumPy-only calls.
    straight = train(tiny("crnn", steps=4, eval_every=2, eval_size=10, backend="numpy"), log=quiet)
    train(tiny("crnn", steps=2, eval_every=2, eval_size=10, backend="array_api_strict"), tmp_path, log=quiet)
    strict = train(
        tiny("crnn", steps=4, eval_every=2, eval_size=10, backend="array_api_strict"),
        tmp_path,
        resume=True,
        log=quiet,
    )
    for name, value in state_of(straight.model).items():
        np.testing.assert_allclose(state_of(strict.model)[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    assert strict.final["sequence_accuracy"] == straight.final["sequence_accuracy"]


@pytest.mark.gpu
@pytest.mark.skipif(not _usable("cupy"), reason="CuPy with a usable GPU is needed")
def test_cupy_training_matches_numpy(tmp_path):
    cpu = train(tiny("fcn", steps=20, eval_every=20, eval_size=50, backend="numpy"), log=quiet)
    gpu = train(tiny("fcn", steps=20, eval_every=20, eval_size=50, backend="cupy"), tmp_path, log=quiet)
    for name, value in state_of(cpu.model).items():
        np.testing.assert_allclose(state_of(gpu.model)[name], value, rtol=1e-3, atol=1e-4, err_msg=name)
    _, model, _, _ = restore(tmp_path, backend="numpy")  # a GPU checkpoint loads on the CPU
    for name, value in state_of(gpu.model).items():
        assert np.array_equal(state_of(model)[name], value), name
