"""``gendsl sample --cond NAME=VALUE``: conditioning inputs that a program declares (``conditions``)."""

import numpy as np
import pytest

from .cli_helpers import EXAMPLES, NORMAL_MODELS, assert_one_line

# A conditional model whose draws show the condition exactly: x ~ Normal(10 y + z, 0.01).
SHIFT = """
import jax.numpy as jnp
import gendsl, gendsl.distributions as dist

@gendsl.model
def model(batch):
    with gendsl.plate("data", batch["x"].shape[0]):
        z = gendsl.sample("z", dist.Normal(0.0, 1.0))
        gendsl.sample("x", dist.Normal(10.0 * batch["y"] + z, 0.01), obs=batch["x"])

@gendsl.model
def guide(batch):
    with gendsl.plate("data", batch["x"].shape[0]):
        gendsl.sample("z", dist.Normal(gendsl.param("loc", 0.0), 1.0))

def data():
    y = jnp.arange(8) % 2
    return {"x": 10.0 * y, "y": y}

conditions = ("y",)
"""


@pytest.fixture(scope="module")
def shift_run(tmp_path_factory):
    """One short fit of ``SHIFT`` shared by the tests (``sample`` only reads the run)."""
    from gendsl.cli import main

    folder = tmp_path_factory.mktemp("shift")
    path = folder / "shift.py"
    path.write_text(SHIFT)
    assert main(["fit", str(path), "--out", str(folder / "run"), "--steps", "2", "--quiet"]) == 0
    return path, folder / "run"


def test_cond_sets_the_conditioning_input_of_every_draw(gendsl_cli, shift_run, tmp_path):
    path, run = shift_run
    for value in (0, 3):
        out = tmp_path / f"y{value}"
        result = gendsl_cli("sample", path, "--run", run, "-n", 5, "--cond", f"y={value}", "--out", out)
        assert result.code == 0, result.err
        assert f"y={value}" in result.out
        samples = np.load(out / "samples.npz")
        assert samples["x"].shape == (5, 8)  # without --batch-size a draw is the whole data set, every y set
        # x - z is 10 y up to the likelihood's sd 0.01 (0.1 would be 10 sds)
        np.testing.assert_allclose(samples["x"] - samples["z"], 10.0 * value, atol=0.1)


def test_cond_errors_are_one_line(gendsl_cli, shift_run, program, tmp_path):
    path, run = shift_run
    base = ("sample", path, "--run", run, "--out", tmp_path / "s")
    assert_one_line(gendsl_cli(*base, "--cond", "label=3"), "no conditioning input 'label'", "its conditions: y")
    assert_one_line(gendsl_cli(*base, "--cond", "y=three"), "--cond y=three", "expected a number")
    assert_one_line(gendsl_cli(*base, "--cond", "y=0.5"), "y holds integers")
    assert_one_line(gendsl_cli(*base, "--cond", "y=1,2"), "2 numbers", "1 per data point")
    assert_one_line(gendsl_cli(*base, "--cond", "y"), "expected NAME=VALUE")
    plain = program(
        NORMAL_MODELS + "\nimport jax.numpy as jnp\ndef data():\n    return jnp.arange(4.0)\n", name="plain.py"
    )
    gendsl_cli("fit", plain, "--out", tmp_path / "plain", "--steps", 2, "--quiet")
    result = gendsl_cli("sample", plain, "--run", tmp_path / "plain", "--cond", "y=3")
    assert_one_line(result, "plain.py is not conditional", "conditions")


def test_conditions_must_name_data_keys(gendsl_cli, program, tmp_path):
    path = program(SHIFT.replace('conditions = ("y",)', 'conditions = ("label",)'), name="bad.py")
    assert gendsl_cli("fit", path, "--out", tmp_path / "run", "--steps", 2, "--quiet").code == 0
    result = gendsl_cli("sample", path, "--run", tmp_path / "run", "--cond", "label=1")
    assert_one_line(result, "`conditions` names label, which the data lacks", "its keys: x, y")


@pytest.mark.slow
def test_cvae_digits_samples_the_class_it_is_given(gendsl_cli, tmp_path):
    """A few hundred steps of the example, then 16 draws given y=3 look more like threes than like anything else."""
    from sklearn.linear_model import LogisticRegression

    from gendsl.datasets import digits

    run = tmp_path / "cvae"
    program = EXAMPLES / "cvae_digits.py"
    assert gendsl_cli("fit", program, "--out", run, "--steps", 500, "--quiet").code == 0
    result = gendsl_cli("sample", program, "--run", run, "--cond", "y=3", "-n", 16, "--out", tmp_path / "s")
    assert result.code == 0, result.err
    assert (tmp_path / "s" / "samples.png").exists()
    x = np.load(tmp_path / "s" / "samples.npz")["x"]
    assert x.shape == (16, 64) and set(np.unique(x).tolist()) <= {0.0, 1.0}
    train = digits("train1500", binarize=True)
    classifier = LogisticRegression(max_iter=2000).fit(train["x"], train["y"])
    assert (classifier.predict(x) == 3).mean() >= 0.5
    assert_one_line(gendsl_cli("sample", program, "--run", run, "--cond", "label=3"), "its conditions: y")
