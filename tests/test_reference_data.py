"""The reference's data generators: text lines, the 2D scatter toy, counting canvases, digit strings.

Checks the batch contract (shapes, dtypes, [0, 1] range, labels), determinism
per seed, held-out sets that use only held-out glyph images, placement that
terminates at the densest accepted setting, text that is never cut at the
border, and that ace_core's count helpers accept the labels. Expected labels
are recomputed independently (collections.Counter over the texts and label
lists, pixel checks against the glyph banks). Pillow and scikit-learn are
optional (the ``reference`` extra): tests that need them skip cleanly.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from _fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import ace_core
from ace_core.reference import _render
from ace_core.reference.counting import CountingCanvas, shape_mask
from ace_core.reference.scatter_toy import ObjectBatch, ScatterToy
from ace_core.reference.text_lines import ALPHABET, TextBatch, TextLines


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_pillow = pytest.mark.skipif(not _has("PIL"), reason="needs Pillow (the reference extra)")
needs_sklearn = pytest.mark.skipif(not _has("sklearn"), reason="needs scikit-learn (the reference extra)")


def _digit_strings(**kwargs):
    pytest.importorskip("sklearn")
    from ace_core.reference.digit_strings import DigitStrings

    return DigitStrings(**kwargs)


# Generators under test, built lazily so that a missing extra skips only its own cases.
LINE_TASKS = [
    pytest.param(lambda **kw: TextLines(**kw), marks=needs_pillow, id="text_lines"),
    pytest.param(_digit_strings, marks=needs_sklearn, id="digit_strings"),
]
OBJECT_TASKS = [
    pytest.param(lambda **kw: ScatterToy(source="digits", **kw), marks=needs_sklearn, id="scatter_digits"),
    pytest.param(
        lambda **kw: ScatterToy(source="font", classes=12, **kw), marks=needs_pillow, id="scatter_font"
    ),
    pytest.param(lambda **kw: CountingCanvas(**kw), id="counting"),
]


@pytest.fixture(params=LINE_TASKS)
def line_task(request):
    return request.param


@pytest.fixture(params=OBJECT_TASKS)
def object_task(request):
    return request.param


def _assert_images(images: np.ndarray, batch: int, height: int, width: int) -> None:
    assert images.shape == (batch, 1, height, width)
    assert images.dtype == np.float32
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.max() > 0.5  # there is ink


def _same_batch(a, b) -> bool:
    return all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------
# Text lines and digit strings


def test_line_batch_contract(line_task):
    task = line_task(min_length=2, max_length=6)
    data = task.batch(np.random.default_rng(0), 16)
    assert isinstance(data, TextBatch)
    _assert_images(data.images, 16, task.height, task.width)
    assert data.targets.shape == (16, 6) and data.targets.dtype == np.int64
    assert data.target_lengths.shape == (16,) and data.target_lengths.dtype == np.int64
    assert task.blank == 0 and task.num_classes == len(task.alphabet) + 1
    assert task.class_names == ["-", *task.alphabet]
    for row, length, text in zip(data.targets, data.target_lengths.tolist(), data.texts, strict=True):
        assert 2 <= length <= 6 and len(text) == length
        assert set(text) <= set(task.alphabet)
        # Independent encoding: class k is alphabet[k - 1], padding is the blank.
        assert row[:length].tolist() == [task.alphabet.index(c) + 1 for c in text]
        assert (row[length:] == 0).all()


def test_text_lines_alphabet():
    assert ALPHABET == "0123456789" + "".join(chr(c) for c in range(ord("A"), ord("Z") + 1))
    task = TextLines()
    assert (task.num_classes, task.blank, task.alphabet, task.height, task.width) == (
        37,
        0,
        ALPHABET,
        32,
        128,
    )


def test_line_determinism_and_heldout(line_task):
    task = line_task()
    first = task.batch(np.random.default_rng(3), 8)
    assert _same_batch(first, task.batch(np.random.default_rng(3), 8))
    assert _same_batch(first, line_task().batch(3, 8))  # an int seed is default_rng(seed); a new object too
    assert not np.array_equal(first.images, task.batch(np.random.default_rng(4), 8).images)
    held = task.heldout(8, seed=3)
    assert _same_batch(held, task.heldout(8, seed=3))
    assert held.texts != first.texts  # a different stream from default_rng(3)
    assert held.texts != task.heldout(8, seed=4).texts
    # render: same rng state, same picture; the text must be from the alphabet.
    text = task.alphabet[:4]
    picture = task.render(text, np.random.default_rng(1))
    assert np.array_equal(picture, task.render(text, np.random.default_rng(1)))
    assert picture.shape == (task.height, task.width) and picture.dtype == np.float32
    assert 0.0 <= picture.min() and picture.max() <= 1.0
    assert 0.0 < picture[0].max() < 0.5  # the border row has no ink, only noise
    with pytest.raises(ValueError, match="not in the alphabet"):
        task.render(text + "a", np.random.default_rng(1))


def test_line_own_stream_advances(line_task):
    task = line_task(seed=5)
    one, two = task.batch(None, 4), task.batch(None, 4)
    assert not np.array_equal(one.images, two.images)
    again = line_task(seed=5)
    assert _same_batch(one, again.batch(None, 4))


@given(st.text(alphabet=ALPHABET, max_size=20))
def test_encode_decode_round_trip(text):
    task = TextLines()
    ids = task.encode(text)
    assert all(1 <= i <= 36 for i in ids)
    assert task.decode(ids) == text
    assert task.decode(np.asarray(ids + [0, 0], dtype=np.int64)) == text  # blanks are skipped


def test_encode_decode_reject():
    task = TextLines()
    with pytest.raises(ValueError, match="position 1"):
        task.encode("Aa")
    with pytest.raises(ValueError, match="outside"):
        task.decode([37])
    with pytest.raises(ValueError, match="outside"):
        task.decode([-1])


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


@needs_pillow
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        # Sizes far too large for the canvas: every line must be shrunk to fit.
        {"size_range": (1.5, 2.5), "max_shear": 0.5, "max_rotation": 8.0},
        {"height": 20, "width": 60, "min_length": 8, "max_length": 10},
    ],
)
def test_text_fits_canvas(kwargs):
    task = TextLines(noise=0.0, **kwargs)
    data = task.batch(np.random.default_rng(11), 48)
    for image in data.images[:, 0]:
        top, bottom, left, right = _ink_box(image)
        # The ink keeps the one-pixel margin: nothing touches (so nothing is cut at) the border.
        assert top >= 1 and left >= 1 and bottom <= task.height - 2 and right <= task.width - 2


@needs_pillow
def test_fonts_found():
    task = TextLines()
    fonts = task.fonts()
    assert fonts[0] == _render.DEFAULT_FONT
    assert all(_render.covers(font, ALPHABET) for font in fonts)
    single = TextLines(fonts=[_render.DEFAULT_FONT])
    assert single.fonts() == [_render.DEFAULT_FONT]
    with pytest.raises(ValueError, match="not found"):
        TextLines(fonts=["/no/such/font.ttf"]).fonts()


@needs_pillow
def test_every_font_draws_distinct_characters():
    # Guards against a font whose glyphs all fall back to the same box: every character differs.
    for font in TextLines().fonts():
        pictures = {_render.render_text(char, font, 24).tobytes() for char in ALPHABET}
        assert len(pictures) == len(ALPHABET), font


def test_text_targets_feed_counts_from_targets(line_task):
    task = line_task()
    data = task.batch(np.random.default_rng(2), 8)
    steps = task.width // 4
    counts = ace_core.counts_from_targets(
        data.targets, data.target_lengths, num_classes=task.num_classes, input_lengths=steps
    )
    assert counts.shape == (8, task.num_classes)
    for row, text in zip(counts, data.texts, strict=True):
        expected = Counter(task.alphabet.index(c) + 1 for c in text)
        assert row[0] == steps - len(text)
        assert {k: int(v) for k, v in enumerate(row.tolist()) if k and v} == dict(expected)
    scores = np.random.default_rng(0).standard_normal((8, steps, task.num_classes)).astype(np.float32)
    assert np.isfinite(ace_core.ace_loss(scores, counts))


@needs_sklearn
def test_digit_strings_heldout_uses_only_test_glyphs():
    from ace_core.reference.digit_strings import DigitStrings

    task = DigitStrings(noise=0.0)
    assert (task.num_classes, task.alphabet) == (11, "0123456789")
    train, test = task.train_glyphs, task.test_glyphs
    train_set = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in train_set for image in test.images)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(1, 11))
    # Blank out one bank: lines drawn from the other still have ink, lines from it have none.
    task.train_glyphs = train._replace(images=np.zeros_like(train.images))
    assert task.heldout(8, seed=0).images.max() > 0.5
    assert task.batch(np.random.default_rng(0), 8).images.max() == 0.0
    task.train_glyphs, task.test_glyphs = train, test._replace(images=np.zeros_like(test.images))
    assert task.heldout(8, seed=0).images.max() == 0.0
    assert task.batch(np.random.default_rng(0), 8).images.max() > 0.5


@needs_sklearn
def test_digit_strings_fit_canvas():
    from ace_core.reference.digit_strings import DigitStrings

    task = DigitStrings(noise=0.0, min_length=8, max_length=8)
    for image in task.batch(np.random.default_rng(1), 32).images[:, 0]:
        top, bottom, left, right = _ink_box(image)
        assert top >= 1 and left >= 1 and bottom <= task.height - 2 and right <= task.width - 2
    with pytest.raises(ValueError, match="do not fit"):
        DigitStrings(width=40, max_length=8, glyph=8)


def test_sklearn_missing_gives_clear_errors(monkeypatch):
    from ace_core.reference.digit_strings import DigitStrings

    _render.load_digit_glyphs.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(ImportError, match="scikit-learn"):
            DigitStrings()
        if _has("PIL"):
            toy = ScatterToy(source="digits", classes=3)  # falls back to rendered digits
            assert toy.source == "font"
            assert toy.alphabet == "012"
    finally:
        _render.load_digit_glyphs.cache_clear()


# ---------------------------------------------------------------------------
# Scatter toy and counting


def _assert_objects(task, data: ObjectBatch, batch: int) -> None:
    assert isinstance(data, ObjectBatch)
    _assert_images(data.images, batch, task.canvas, task.canvas)
    assert data.object_counts.shape == (batch, task.num_classes)
    assert data.object_counts.dtype == np.int64
    assert (data.object_counts[:, 0] == 0).all()
    assert len(data.labels) == len(data.positions) == batch
    for counts, labels, positions in zip(data.object_counts, data.labels, data.positions, strict=True):
        assert len(labels) == len(positions) == int(counts.sum())
        assert {k: int(v) for k, v in enumerate(counts.tolist()) if v} == dict(Counter(labels))
        assert all(1 <= label < task.num_classes for label in labels)
        for row, col in positions:
            assert 0 <= row and 0 <= col  # the far edges are checked in the pixel tests


def test_object_batch_contract(object_task):
    task = object_task()
    data = task.batch(np.random.default_rng(0), 32)
    _assert_objects(task, data, 32)
    assert task.blank == 0 and task.num_classes == task.classes + 1
    assert len(task.class_names) == task.num_classes and task.class_names[0] == "-"


def test_object_determinism_and_heldout(object_task):
    task = object_task()
    first = task.batch(np.random.default_rng(3), 8)
    assert _same_batch(first, task.batch(np.random.default_rng(3), 8))
    assert _same_batch(first, object_task().batch(3, 8))
    assert not np.array_equal(first.images, task.batch(np.random.default_rng(4), 8).images)
    held = task.heldout(8, seed=3)
    assert _same_batch(held, task.heldout(8, seed=3))
    assert not np.array_equal(held.images, first.images)
    assert not np.array_equal(held.images, task.heldout(8, seed=4).images)


def test_object_counts_feed_counts_with_background(object_task):
    # object_counts carries a zero blank column, so it is (B, C) as counts_with_background wants.
    task = object_task()
    data = task.batch(np.random.default_rng(5), 8)
    cells = (task.canvas // 4) ** 2
    counts = ace_core.counts_with_background(data.object_counts, input_lengths=cells)
    for row, labels in zip(counts, data.labels, strict=True):
        assert row[0] == cells - len(labels)
        assert {k: int(v) for k, v in enumerate(row.tolist()) if k and v} == dict(Counter(labels))
    scores = np.random.default_rng(0).standard_normal((8, cells, task.num_classes)).astype(np.float32)
    assert np.isfinite(ace_core.ace_loss(scores, counts))


def _boxes_apart(boxes: list[tuple[int, int, int, int]], gap: int) -> bool:
    for i, (r0, c0, h0, w0) in enumerate(boxes):
        for r1, c1, h1, w1 in boxes[i + 1 :]:
            if not (r0 + h0 + gap <= r1 or r1 + h1 + gap <= r0 or c0 + w0 + gap <= c1 or c1 + w1 + gap <= c0):
                return False
    return True


def _check_scatter_pixels(task: ScatterToy, data: ObjectBatch, bank: _render.GlyphBank) -> None:
    """With noise 0: each glyph box holds exactly one image of ``bank`` of its label; no ink elsewhere."""
    g = task.glyph
    by_bytes = {}
    for image, label in zip(bank.images, bank.labels.tolist(), strict=True):
        by_bytes.setdefault(image.tobytes(), set()).add(label)
    for image, labels, positions in zip(data.images[:, 0], data.labels, data.positions, strict=True):
        boxes = [(r, c, g, g) for r, c in positions]
        assert all(r + g <= task.canvas and c + g <= task.canvas for r, c in positions)
        assert _boxes_apart(boxes, gap=0)
        outside = np.ones_like(image, dtype=bool)
        for (r, c), label in zip(positions, labels, strict=True):
            patch = image[r : r + g, c : c + g]
            assert label in by_bytes.get(patch.tobytes(), set())
            outside[r : r + g, c : c + g] = False
        assert not image[outside].any()


@pytest.mark.parametrize(
    "source", [pytest.param("digits", marks=needs_sklearn), pytest.param("font", marks=needs_pillow)]
)
def test_scatter_heldout_uses_only_test_glyphs(source):
    task = ScatterToy(source=source, classes=6, noise=0.0)
    train, test = task.train_glyphs, task.test_glyphs
    train_set = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in train_set for image in test.images)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(1, 7))
    _check_scatter_pixels(task, task.batch(np.random.default_rng(0), 32), train)
    _check_scatter_pixels(task, task.heldout(32, seed=0), test)


@needs_sklearn
@pytest.mark.parametrize(("canvas", "glyph", "objects"), [(16, 8, 4), (24, 8, 9), (20, 6, 9), (32, 8, 16)])
def test_scatter_placement_terminates_at_max_density(canvas, glyph, objects):
    task = ScatterToy(canvas=canvas, glyph=glyph, min_objects=objects, max_objects=objects, noise=0.0)
    data = task.batch(np.random.default_rng(0), 16)
    assert all(len(labels) == objects for labels in data.labels)
    _check_scatter_pixels(task, data, task.train_glyphs)


def test_scatter_rejects_overfull_canvas():
    with pytest.raises(ValueError, match="cannot all fit"):
        ScatterToy(canvas=16, glyph=8, max_objects=5)


def test_counting_counts_and_pixels():
    task = CountingCanvas(noise=0.0)
    assert task.shapes == ("circle", "square", "triangle") and task.num_classes == 4
    data = task.batch(np.random.default_rng(0), 256)
    _assert_objects(task, data, 256)
    counts = data.object_counts[:, 1:]
    assert counts.min() == 0 and counts.max() == 9  # the whole range 0..max_per_class occurs
    assert (counts.sum(axis=1) <= 12).all()
    low, high = task.sizes
    for image, positions in zip(data.images[:, 0], data.positions, strict=True):
        # Shapes are at most `high` px and 1 px apart: ink only near the corners, one blob per corner.
        outside = np.ones_like(image, dtype=bool)
        for r, c in positions:
            assert r + low <= task.canvas and c + low <= task.canvas
            assert image[r : r + high, c : c + high].max() > 0.3
            outside[r : r + high, c : c + high] = False
        assert not image[outside].any()


@given(
    classes=st.integers(1, 4),
    max_per_class=st.integers(0, 9),
    max_total=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=examples(25), deadline=None)
def test_counting_respects_limits(classes, max_per_class, max_total, seed):
    shapes = ("circle", "square", "triangle", "cross")
    task = CountingCanvas(classes=classes, max_per_class=max_per_class, max_total=max_total, shapes=shapes)
    data = task.batch(np.random.default_rng(seed), 8)
    counts = data.object_counts
    assert counts.shape == (8, classes + 1)
    assert (counts[:, 0] == 0).all() and (counts <= max_per_class).all()
    assert (counts.sum(axis=1) <= max_total).all()
    assert [len(labels) for labels in data.labels] == counts.sum(axis=1).tolist()


def test_counting_dense_canvas_terminates():
    # 16 shapes of 8 px, 1 px apart, on a 35 px canvas: only the 4x4 grid fits.
    task = CountingCanvas(canvas=35, classes=2, max_per_class=8, max_total=16, sizes=(8, 8), noise=0.0)
    data = task.batch(np.random.default_rng(0), 8)
    for labels, positions in zip(data.labels, data.positions, strict=True):
        assert _boxes_apart([(r, c, 8, 8) for r, c in positions], gap=1)
        assert all(r + 8 <= 35 and c + 8 <= 35 for r, c in positions)
        assert len(labels) <= 16
    with pytest.raises(ValueError, match="cannot all fit"):
        CountingCanvas(canvas=34, classes=2, max_per_class=8, max_total=16, sizes=(8, 8))


def test_shape_masks():
    # Areas against the geometry (4x supersampled coverage of a 32 px box).
    assert shape_mask("square", 32).mean() == pytest.approx(1.0)
    assert shape_mask("circle", 32).mean() == pytest.approx(np.pi / 4, abs=0.01)
    # The triangle spans the full width and 0.9 of the height: (2 * 1.8 / 2) / 4.
    assert shape_mask("triangle", 32).mean() == pytest.approx(0.45, abs=0.01)
    assert shape_mask("diamond", 32).mean() == pytest.approx(0.5, abs=0.01)
    ring = shape_mask("ring", 32).mean()
    assert ring == pytest.approx(np.pi / 4 * (1 - 0.45**2), abs=0.01)
    for name in ("square", "triangle", "cross"):
        mask = shape_mask(name, 16, 15.0)
        assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.dtype == np.float32
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 8)


# ---------------------------------------------------------------------------
# Placement, streams, imports


@given(
    canvas=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    cell=st.integers(1, 10),
    gap=st.integers(0, 2),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=examples(60), deadline=None)
def test_place_boxes_property(canvas, cell, gap, fill, seed):
    capacity = _render.grid_capacity(canvas, cell, gap)
    count = round(fill * capacity)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, cell, size=(count, 2), endpoint=True)  # boxes up to `cell` on a side
    corners = _render.place_boxes(rng, sizes, canvas, gap=gap, tries=8, restarts=2)
    assert corners.shape == (count, 2)
    boxes = [(r, c, h, w) for (r, c), (h, w) in zip(corners.tolist(), sizes.tolist(), strict=True)]
    assert all(r >= 0 and c >= 0 and r + h <= canvas[0] and c + w <= canvas[1] for r, c, h, w in boxes)
    assert _boxes_apart(boxes, gap)


def test_heldout_stream_differs_from_plain_seed():
    for seed in range(4):
        assert _render.stream(seed, _render.HELDOUT_KEY).random() != np.random.default_rng(seed).random()
    with pytest.raises(TypeError, match="Generator"):
        _render.as_generator(1.5, np.random.default_rng(0))


def test_resize_bilinear_matches_pillow():
    image_mod = pytest.importorskip("PIL.Image")
    source = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    ours = _render.resize_bilinear(source, 14, 20)
    theirs = np.asarray(image_mod.fromarray(source).resize((20, 14), image_mod.Resampling.BILINEAR))
    # Pillow widens its filter when downscaling only; upscaling is plain bilinear with aligned centres.
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_importing_generators_loads_no_pillow_or_sklearn():
    code = (
        "import sys, ace_core; import ace_core.reference.text_lines, ace_core.reference.scatter_toy, "
        "ace_core.reference.counting, ace_core.reference.digit_strings; "
        "from ace_core.reference.text_lines import TextLines; t = TextLines(); t.encode('AB'); "
        "from ace_core.reference.counting import CountingCanvas; CountingCanvas().batch(0, 2); "
        "print(sorted(m for m in ('PIL', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
