"""The --strategy rule syntax, including the dependency-tracking switch."""

import pytest

from gendsl.cli._build import parse_strategy
from gendsl.cli._errors import CLIError
from gendsl.inference import ENUM, Reinforce


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("enum", ENUM),
        ("reinforce", Reinforce()),
        ("reinforce:loo", Reinforce(baseline="loo")),
        ("reinforce:none:notrack", Reinforce(baseline=None, track_dependencies=False)),
        ("reinforce:notrack", Reinforce(track_dependencies=False)),
        ("REINFORCE:-2.5", Reinforce(baseline=-2.5)),
    ],
)
def test_rules_parse(text, expected):
    assert parse_strategy(text) == expected


@pytest.mark.parametrize("text", ["reinforce:loo:ema", "reinforce:fast", "enum:notrack", "notrack"])
def test_bad_rules_name_the_choices(text):
    with pytest.raises(CLIError, match="notrack"):
        parse_strategy(text)


def test_auto_rules_parse_to_the_auto_strategy():
    from gendsl.cli._build import parse_rules, strategy_rules
    from gendsl.inference import AUTO

    assert parse_strategy("auto") is AUTO and parse_strategy(" AUTO ") is AUTO
    command = parse_rules(["auto", "z_pres_*=auto", "w=enum"])
    assert command == [(None, AUTO), ("z_pres_*", AUTO), ("w", ENUM)]
    assert strategy_rules([], command) == {"w": ENUM, "z_pres_*": AUTO, None: AUTO}


def test_a_programs_auto_strategies_parse(tmp_path):
    from gendsl.cli._build import program_rules
    from gendsl.cli._program import load_program
    from gendsl.inference import AUTO

    path = tmp_path / "prog.py"
    path.write_text('from gendsl.inference import AUTO\nstrategies = {"z*": "auto", "c": AUTO}\n')
    assert program_rules(load_program(path)) == [("z*", AUTO), ("c", AUTO)]


@pytest.mark.slow  # ~15 s: the candidates compiled at init, then a short fit
def test_fit_with_strategy_auto_chooses_at_init(gendsl_cli, tmp_path):
    import json
    import pathlib

    points = pathlib.Path(__file__).parent / "programs" / "points.py"
    out = tmp_path / "run"
    result = gendsl_cli("fit", points, "--out", out, "--steps", 20, "--batch-size", 16, "--strategy", "b=auto",
                        "--quiet")
    assert result.code == 0, result.err
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["strategies"] == ["b=Auto()"]
    # The choice is recorded, shown, and kept: a resume applies it instead of measuring again, so the resumed
    # run equals a run with the chosen strategy written in, bit for bit.
    chosen = config["resolved"]["strategy_choice"]
    assert list(chosen) == ["sim0/b"] and chosen["sim0/b"] in ("ENUM", "MVD", "REINFORCE")
    assert f"strategy auto chose: sim0/b={chosen['sim0/b']}" in (out / "summary.txt").read_text()
    import numpy as np

    from gendsl.inference import _svi

    def measuring(*args, **kwargs):
        raise AssertionError("a resumed run measured the strategies again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_svi, "choose_strategies", measuring)
        result = gendsl_cli("fit", points, "--out", out, "--steps", 30, "--resume", "--quiet")
    assert result.code == 0, result.err
    explicit = tmp_path / "explicit"
    assert gendsl_cli("fit", points, "--out", explicit, "--steps", 30, "--batch-size", 16, "--strategy",
                      f"b={chosen['sim0/b'].lower()}", "--quiet").code == 0
    with np.load(out / "params.npz") as a, np.load(explicit / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "__meta__")
