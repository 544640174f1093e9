"""Failures of `gendsl fit` that need more than one call or a success path to check.

The one-call cases (one line on stderr, exit code 2, nothing written) are the catalogue in
test_reliability.py.
"""

from .cli_helpers import EXAMPLES, NORMAL_MODELS, assert_one_line, listing

GOOD_DATA = '''
def data():
    return jnp.array([1.0, 2.0, 3.0])
'''


def test_debug_shows_the_traceback(gendsl_cli, program, tmp_path):
    path = program("import gendsl\n\nx = 1\ny = x / 0\n")
    out = tmp_path / "out"
    debug = gendsl_cli("fit", path, "--out", out, "--debug")
    assert debug.code == 2
    assert "Traceback" in debug.err and "y = x / 0" in debug.err
    assert listing(out) == []


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


def test_data_of_wrong_width_for_a_network(gendsl_cli, tmp_path, program):
    """A VAE given 65-pixel images: the error names the program's line, not JAX internals."""
    source = (EXAMPLES / "vae_digits.py").read_text()
    source = source.replace("return binary[:1500], binary[1500:]",
                            "return jnp.ones((20, 65)), jnp.ones((5, 65))")
    path = program(source, "vae.py")
    line = assert_one_line(gendsl_cli("fit", path, "--out", tmp_path / "out", "--batch-size", 4), "vae.py:")
    assert listing(tmp_path / "out") == []
    assert len(line) < 500


def test_no_command_prints_help(gendsl_cli):
    result = gendsl_cli()
    assert result.code == 2
    assert "fit" in result.err and "sample" in result.err and "eval" in result.err
