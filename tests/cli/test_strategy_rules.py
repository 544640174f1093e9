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
