"""Every failure of `gendsl fit` before training is one line on stderr, exit code 2, and nothing written."""

import pytest

from .cli_helpers import EXAMPLES, NORMAL_MODELS, PROGRAMS, listing

GOOD_DATA = '''
def data():
    return jnp.array([1.0, 2.0, 3.0])
'''


def assert_one_line(result, *fragments, code=2):
    assert result.code == code, result.err
    lines = result.error_lines
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.err
    return lines[0]


def test_missing_file(gendsl_cli, tmp_path):
    out = tmp_path / "out"
    result = gendsl_cli("fit", tmp_path / "nope.py", "--out", out)
    assert_one_line(result, "nope.py", "no such file")
    assert listing(out) == []


def test_syntax_error_names_file_and_line(gendsl_cli, program, tmp_path):
    path = program("import gendsl\n\ndef f(:\n    pass\n")
    out = tmp_path / "out"
    line = assert_one_line(gendsl_cli("fit", path, "--out", out), f"{path}:3", "SyntaxError")
    assert line.startswith("gendsl fit: error:")
    assert listing(out) == []


def test_exception_at_import_names_line_and_debug_shows_traceback(gendsl_cli, program, tmp_path):
    path = program("import gendsl\n\nx = 1\ny = x / 0\n")
    out = tmp_path / "out"
    assert_one_line(gendsl_cli("fit", path, "--out", out), f"{path}:4", "ZeroDivisionError", "importing")
    debug = gendsl_cli("fit", path, "--out", out, "--debug")
    assert debug.code == 2
    assert "Traceback" in debug.err and "y = x / 0" in debug.err
    assert listing(out) == []


def test_exception_in_data_names_line(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + "\ndef data():\n    return jnp.load('missing-file.npy')\n")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "prog.py:", "in data()")
    assert listing(tmp_path / "out") == []


def test_no_model(gendsl_cli, program, tmp_path):
    path = program("def data():\n    return [1.0]\n")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "no model", "@gendsl.model def model")


def test_model_without_guide_says_what_to_add(gendsl_cli, program, tmp_path):
    source = NORMAL_MODELS.split("@gendsl.model\ndef guide")[0] + GOOD_DATA
    path = program(source)
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "no guide", 'guide = "auto"')


def test_several_candidates(gendsl_cli, program, tmp_path):
    source = NORMAL_MODELS.replace("def model(", "def m1(").replace("def guide(", "def g1(")
    source += "\n@gendsl.model\ndef g2(x):\n    gendsl.sample('mu', dist.Normal(0.0, 1.0))\n" + GOOD_DATA
    path = program(source)
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "several candidate", "`m1`", "--model")


def test_two_unnamed_models_are_told_apart_by_observations(gendsl_cli, program, tmp_path):
    source = NORMAL_MODELS.replace("def model(", "def likelihood(").replace("def guide(", "def posterior(")
    path = program(source + GOOD_DATA + "\ndefaults = {'steps': 5, 'chunk_size': 5}\n")
    result = gendsl_cli("fit", path, "--out", tmp_path / "out", "--quiet")
    assert result.code == 0, result.err
    assert "model `likelihood`, guide `posterior`" in (tmp_path / "out" / "summary.txt").read_text()


def test_a_plain_numpyro_function_named_model_is_a_model(gendsl_cli, program, tmp_path):
    source = NORMAL_MODELS.replace("@gendsl.model\ndef model(", "def model(").replace("gendsl.sample", "numpyro.sample")
    path = program("import numpyro\n" + source + GOOD_DATA + "\ndefaults = {'steps': 5, 'chunk_size': 5}\n")
    result = gendsl_cli("fit", path, "--out", tmp_path / "out", "--quiet")
    assert result.code == 0, result.err


def test_two_models_neither_observing_is_ambiguous(gendsl_cli, program, tmp_path):
    source = (
        "import jax.numpy as jnp\nimport gendsl, gendsl.distributions as dist\n"
        "@gendsl.model\ndef a(x):\n    gendsl.sample('mu', dist.Normal(0.0, 1.0))\n"
        "@gendsl.model\ndef b(x):\n    gendsl.sample('mu', dist.Normal(0.0, 2.0))\n" + GOOD_DATA
    )
    assert_one_line(gendsl_cli("fit", program(source), "--out", tmp_path / "out"), "ambiguous", "`model` and `guide`")


def test_no_data(gendsl_cli, program, tmp_path):
    assert_one_line(gendsl_cli("fit", program(NORMAL_MODELS), "--out", tmp_path / "out"), "no data", "def data()")


def test_data_with_nan(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + "\ndef data():\n    return jnp.array([1.0, jnp.nan, 2.0])\n")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "NaN", "index (1,)")
    assert listing(tmp_path / "out") == []


def test_data_of_wrong_shape(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + "\ndef data():\n    return jnp.ones((5, 3))\n")
    line = assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out"), "ObservationError", "shape (5, 3)")
    assert "prog.py:" in line  # the model's line that observes the data
    assert listing(tmp_path / "out") == []


def test_data_of_wrong_width_for_a_network(gendsl_cli, tmp_path, program):
    """A VAE given 65-pixel images: the error names the program's line, not JAX internals."""
    source = (EXAMPLES / "vae_digits.py").read_text()
    source = source.replace("return binary[:1500], binary[1500:]",
                            "return jnp.ones((20, 65)), jnp.ones((5, 65))")
    path = program(source, "vae.py")
    line = assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out", "--batch-size", 4), "vae.py:")
    assert listing(tmp_path / "out") == []
    assert len(line) < 500


def test_data_path_mismatch(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + GOOD_DATA)
    assert_one_line(gendsl_cli("fit", path, "--data", "x.bin", "--out", tmp_path / "o"), "takes no argument")
    path = program(NORMAL_MODELS + "\ndef data(path):\n    return jnp.ones(3)\n", "needs.py")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "o"), "--data PATH")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--objective", "elbow"], "unknown objective 'elbow'"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--steps", "0"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--batch-size", "1000"], "larger than the training data"),
        (["--optimizer", "adamx"], "--optimizer"),
        (["--objective", "vimco", "--particles", "1"], "vimco needs --particles 2"),
        (["--strategy", "mu=bogus"], "unknown strategy 'bogus'"),
        (["--strategy", "mu=enum"], "mu': ENUM needs a finite support"),
        (["--device", "tpu"], "--device"),
        (["--unknown-flag"], "unrecognized arguments"),
    ],
)
def test_bad_options(gendsl_cli, tmp_path, argv, fragment):
    out = tmp_path / "out"
    result = gendsl_cli("fit", PROGRAMS / "normal.py", "--out", out, *argv)
    assert_one_line(result, fragment)
    assert listing(out) == []


def test_bad_defaults_in_the_program(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + GOOD_DATA + "\ndefaults = {'learning_rate': 0.1}\n")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "o"), "defaults", "'learning_rate'", "lr")
    path = program(NORMAL_MODELS + GOOD_DATA + "\ndefaults = {'steps': -5}\n", "p2.py")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "o"), "defaults['steps']", "positive")
    assert listing(tmp_path / "o") == []


def test_program_objective_must_build_an_expectation(gendsl_cli, program, tmp_path):
    path = program(NORMAL_MODELS + GOOD_DATA + "\ndef objective(model, guide):\n    return 3\n")
    assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "o"), "returned a int")


def test_resume_without_a_run(gendsl_cli, tmp_path):
    assert_one_line(gendsl_cli("fit", PROGRAMS / "normal.py", "--out", tmp_path / "o", "--resume"), "no run")


def test_sample_and_eval_need_a_run(gendsl_cli, tmp_path):
    assert_one_line(gendsl_cli("sample", PROGRAMS / "normal.py", "--run", tmp_path), "no config.json")
    assert_one_line(gendsl_cli("eval", PROGRAMS / "normal.py", "--run", tmp_path / "x"), "no such directory")


def test_no_command_prints_help(gendsl_cli):
    result = gendsl_cli()
    assert result.code == 2
    assert "fit" in result.err and "sample" in result.err and "eval" in result.err
