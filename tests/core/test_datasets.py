"""``gendsl.datasets.digits`` and ``sprites``: the splits, the thick attribute and the sprite factors."""

import numpy as np
import pytest

from gendsl.datasets import DIGITS_SPLITS, SPRITE_FACTORS, digits, sprites


def test_digits_splits_partition_the_images_in_order():
    from sklearn.datasets import load_digits

    target = load_digits().target
    sizes = {split: len(digits(split)["y"]) for split in DIGITS_SPLITS}
    assert sizes == {"train": 1000, "validation": 350, "test": 447, "train1500": 1500, "test1500": 297}
    joined = np.concatenate([digits(s)["y"] for s in ("train", "validation", "test")])
    np.testing.assert_array_equal(joined, target)


def test_digits_binarize_thresholds_at_half_intensity():
    grey, binary = digits("test1500"), digits("test1500", binarize=True)
    assert grey["x"].shape == (297, 64) and grey["x"].dtype == np.float32
    assert grey["x"].min() >= 0.0 and grey["x"].max() <= 1.0 and len(np.unique(grey["x"])) == 17
    np.testing.assert_array_equal(binary["x"], (grey["x"] > 0.5).astype(np.float32))


@pytest.mark.parametrize("binarize", [False, True])
def test_thick_is_ink_above_the_training_median(binarize):
    train = digits("train", binarize=binarize)
    median = np.median(train["x"].sum(1))
    for split in ("train", "validation", "test"):
        part = digits(split, binarize=binarize)
        np.testing.assert_array_equal(part["thick"], (part["x"].sum(1) > median).astype(np.int32))
    # the digits-bin protocol takes its median from its own training split
    bin_train = digits("train1500", binarize=binarize)
    test = digits("test1500", binarize=binarize)
    np.testing.assert_array_equal(test["thick"], test["x"].sum(1) > np.median(bin_train["x"].sum(1)))
    assert set(np.unique(train["y"] * 2 + train["thick"]).tolist()) == set(range(20))


def test_digits_rejects_an_unknown_split():
    with pytest.raises(ValueError, match=r"split must be one of .*'validation'.*got 'dev'"):
        digits("dev")


def test_sprites_cover_every_factor_combination_repeats_times():
    images, factors = sprites(repeats=2, seed=3)
    assert images.shape == (1536, 16, 16) and images.dtype == np.float32
    assert set(np.unique(images).tolist()) == {0.0, 1.0}
    for name, values in SPRITE_FACTORS.items():
        assert factors[name].dtype == np.int32
        assert factors[name].min() == 0 and factors[name].max() == len(values) - 1
    combos = np.stack([factors[n] for n in SPRITE_FACTORS], axis=1)
    _, counts = np.unique(combos, axis=0, return_counts=True)
    assert len(counts) == 3 * 4 * 8 * 8 and (counts == 2).all()


def test_sprites_are_deterministic_by_seed_and_jittered_between_repeats():
    a, fa = sprites(repeats=2, seed=0)
    b, fb = sprites(repeats=2, seed=0)
    c, _ = sprites(repeats=2, seed=1)
    np.testing.assert_array_equal(a, b)
    for name in SPRITE_FACTORS:
        np.testing.assert_array_equal(fa[name], fb[name])
    assert not np.array_equal(a, c)
    # a disc's two renderings of one combination differ by the sub-pixel jitter (for some combination)
    disc = np.flatnonzero(fa["shape"] == 1)
    key = fa["scale"][disc] * 64 + fa["x"][disc] * 8 + fa["y"][disc]
    order = disc[np.argsort(key, kind="stable")]
    assert (a[order[0::2]] != a[order[1::2]]).any()


def test_sprites_lie_at_their_factors():
    images, factors = sprites(repeats=1, jitter=0.0)
    rows, cols = np.mgrid[0:16, 0:16]
    ink = images.sum((1, 2))
    assert ink.min() > 0
    square = factors["shape"] == 0
    centre_x = (images * cols).sum((1, 2)) / ink
    centre_y = (images * rows).sum((1, 2)) / ink
    np.testing.assert_allclose(centre_x[square], np.asarray(SPRITE_FACTORS["x"])[factors["x"][square]])
    np.testing.assert_allclose(centre_y[square], np.asarray(SPRITE_FACTORS["y"])[factors["y"][square]])
    # without jitter a square of integer half-size h centred on a pixel is 2h + 1 pixels wide
    side = 2 * np.asarray(SPRITE_FACTORS["scale"]) + 1
    np.testing.assert_array_equal(ink[square], side[factors["scale"][square]] ** 2)
    for shape in range(3):  # bigger scale, more ink
        of = factors["shape"] == shape
        means = [ink[of & (factors["scale"] == s)].mean() for s in range(4)]
        assert np.all(np.diff(means) > 0)


def test_sprites_reject_bad_arguments():
    with pytest.raises(ValueError, match="jitter must be in"):
        sprites(jitter=0.5)
    with pytest.raises(ValueError, match="size must be at least 16"):
        sprites(size=12)
