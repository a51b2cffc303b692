"""``ace train``, ``ace predict`` and ``ace reproduce``: smoke tests of the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the training reference needs the `reference` extra (Pillow)")
pytest.importorskip("matplotlib", reason="the training reference needs the `reference` extra (matplotlib)")
pytest.importorskip("sklearn", reason="the digit tasks need the `reference` extra (scikit-learn)")

from PIL import Image  # noqa: E402

import ace_core  # noqa: E402
from ace_core.cli import main  # noqa: E402
from ace_core.reference import tasks  # noqa: E402
from ace_core.reference.predict import load_image  # noqa: E402
from ace_core.reference.train import TrainConfig, train  # noqa: E402


def save_png(image: np.ndarray, path, *, dark_on_light: bool = False) -> None:
    pixels = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    if dark_on_light:
        pixels = 1 - pixels
    Image.fromarray(np.round(255 * pixels).astype(np.uint8), mode="L").save(path)


def test_train_crnn_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "crnn", "--steps", "5", "--out", str(out), "--eval-size", "16", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "sequence accuracy" in captured.out and "after 5 steps" in captured.out
    assert "greedy" in captured.out and "ordered" in captured.out  # both readouts are reported
    assert "loss-floor" in captured.err and "img/s" in captured.err
    for name in ("checkpoint.npz", "config.json", "metrics.json", "learning_curves.png"):
        assert (out / name).is_file(), name
    # --resume with more steps continues from step 5
    code = main(
        ["train", "crnn", "--steps", "7", "--out", str(out), "--resume", "--json", "--no-plots", "-q"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["steps"] == 7 and summary["step"] == 7 and summary["backend"] == "numpy"
    assert captured.err == ""


def test_train_usage_errors(capsys):
    assert main(["train", "nope"]) == 2
    assert main(["train", "crnn", "--steps", "0"]) == 2
    assert main(["train", "crnn", "--lr", "-1"]) == 2
    assert main(["train", "crnn", "--blank-bias", "big"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["train", "fcn", "--head", "linear"]) == 2
    assert "--head is an option of the CRNN tasks" in capsys.readouterr().err


def test_predict_reads_what_the_model_reads(tmp_path, capsys):
    config = TrainConfig(
        task="digits",
        steps=200,
        eval_every=200,
        eval_size=50,
        lr=1e-2,
        warmup=0,
        schedule="constant",
        backend="numpy",
        data=dict(height=16, width=64, min_length=2, max_length=4),
        model=dict(channels=[8, 16], hidden=32, head="linear"),
    )
    result = train(config, tmp_path / "run", threads=1, log=lambda line: None)
    heldout = result.dataset.heldout(6, seed=3)
    paths = []
    for index, image in enumerate(heldout.images):
        path = tmp_path / f"line{index}.png"
        save_png(image[0], path, dark_on_light=index % 2 == 1)  # half of them black on white
        paths.append(str(path))
    # The model's own reading of the 8-bit images, in memory:
    batch = np.concatenate([load_image(p, 16) for p in paths])
    logits, _ = result.model.forward(batch, train=False)
    task = tasks.get_task("digits")
    expected = tasks.readout(task, logits, result.dataset, xp=np)  # greedy, the function's default
    ordered = tasks.readout(task, logits, result.dataset, xp=np, sequence_readout="ordered")
    assert [result.dataset.decode(x) for x in ace_core.decode_greedy(logits, xp=np)] == expected
    assert [result.dataset.decode(x) for x in ace_core.decode_ordered(logits, xp=np)] == ordered
    # ace predict reads count-ordered by default, greedily on request:
    assert main(["predict", str(tmp_path / "run"), *paths, "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}: {text}" for p, text in zip(paths, ordered, strict=True)]
    assert main(["predict", str(tmp_path / "run"), *paths, "--readout", "greedy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{p}: {text}" for p, text in zip(paths, expected, strict=True)]
    # ...and mostly right, black-on-white files included (the model reads ~70% of the strings).
    right = [text == truth for text, truth in zip(expected, heldout.texts, strict=True)]
    assert sum(right) >= 3 and sum(right[1::2]) >= 1, (expected, heldout.texts)


def test_load_image_inverts_dark_ink_and_keeps_the_aspect_ratio(tmp_path):
    image = np.zeros((16, 40))
    image[4:12, 5:15] = 1.0
    save_png(image, tmp_path / "light.png")
    save_png(image, tmp_path / "dark.png", dark_on_light=True)
    light = load_image(tmp_path / "light.png", 16)
    dark = load_image(tmp_path / "dark.png", 16)
    assert light.shape == (1, 1, 16, 40) and light.dtype == np.float32
    np.testing.assert_allclose(light, dark, atol=1 / 255)
    np.testing.assert_allclose(light[0, 0], image, atol=1 / 255)
    assert load_image(tmp_path / "light.png", 8).shape == (1, 1, 8, 20)
    assert load_image(tmp_path / "light.png", 32, 32).shape == (1, 1, 32, 32)
    np.testing.assert_allclose(
        load_image(tmp_path / "dark.png", 16, invert="no")[0, 0], 1 - image, atol=1 / 255
    )


def test_predict_counts_and_bags(tmp_path, capsys):
    for task in ("fcn", "count"):
        run = tmp_path / task
        assert (
            main(["train", task, "--steps", "2", "--out", str(run), "--eval-size", "8", "-q", "--no-plots"])
            == 0
        )
        dataset = tasks.build_dataset(tasks.get_task(task))
        save_png(dataset.heldout(1, seed=0).images[0, 0], tmp_path / f"{task}.png")
        capsys.readouterr()
        assert main(["predict", str(run), str(tmp_path / f"{task}.png"), "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        if task == "count":
            assert set(record["prediction"]) == set(tasks.class_names(dataset)[1:])
            assert all(isinstance(v, int) and v >= 0 for v in record["prediction"].values())
        else:
            assert isinstance(record["prediction"], list)


def test_predict_errors(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing"), str(tmp_path / "x.png")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing"), str(tmp_path / "x.png"), "--readout", "best"]) == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_readout_rejects_an_unknown_sequence_readout():
    task = tasks.get_task("crnn")
    dataset = tasks.build_dataset(task)
    logits = np.zeros((1, 4, dataset.num_classes))
    with pytest.raises(ValueError, match="`readout` must be one of greedy, ordered"):
        tasks.readout(task, logits, dataset, xp=np, sequence_readout="best")
    assert np.all(logits == 0)


def test_training_options_take_their_defaults_from_the_one_table():
    from ace_core.cli import build_parser
    from ace_core.reference.defaults import SEQUENCE_READOUT, TRAIN_DEFAULTS, train_defaults

    parser = build_parser()
    args = parser.parse_args(["train", "count"])
    for name in ("optimizer", "seed", "eval_size", "loss"):
        assert getattr(args, name) == TRAIN_DEFAULTS[name], name
    assert parser.parse_args(["predict", "run", "x.png"]).readout == SEQUENCE_READOUT == "ordered"
    for name in tasks.TASKS:
        config = TrainConfig(task=name, backend="numpy").resolved()
        assert tasks.get_task(name).train_defaults == train_defaults(name)
        for field, value in train_defaults(name).items():
            assert getattr(config, field) == value, (name, field)
        assert (
            config.eval_size == TRAIN_DEFAULTS["eval_size"]
            and config.log_every == TRAIN_DEFAULTS["log_every"]
        )
    assert TrainConfig(task="crnn", optimizer="adadelta", backend="numpy").resolved().lr == 1.0
    assert train_defaults("count")["steps"] == 2000 and train_defaults("crnn")["steps"] == 3000


def test_reproduce_smoke(tmp_path, capsys):
    code = main(["reproduce", "toy2d", "--steps", "3", "--out", str(tmp_path), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("toy2d: after 3 steps")
    summary = json.loads((tmp_path / "toy2d.json").read_text())
    assert summary["steps"] == 3 and "bag_accuracy" in summary["table"]
    for name in ("toy2d.png", "toy2d_map.png"):
        assert (tmp_path / name).stat().st_size < 100_000


def test_help_lists_the_training_commands():
    result = subprocess.run(
        [sys.executable, "-m", "ace_core.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ("train", "predict", "reproduce"):
        assert command in result.stdout
