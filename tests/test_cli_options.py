"""Command-line values (``--option``, ``--policy-option``, ``key=value`` overrides) go through one guarded
YAML parser (issue 15.9): a tag or a syntax error is one line naming the argument, exit 2, no traceback."""

from __future__ import annotations

import pytest

from kdsr.cli import _parse_options, main
from kdsr.config import apply_overrides, parse_value
from kdsr.errors import KdsrError


def test_values_are_yaml_scalars_and_lists():
    assert _parse_options(["n_feats=16", "lr=1.0e-3", "taps=[head, body]", "flag=false", "name=x", "empty="]) == {
        "n_feats": 16,
        "lr": 1e-3,
        "taps": ["head", "body"],
        "flag": False,
        "name": "x",
        "empty": "",
    }


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("!!python/object/apply:os.system [echo pwned]", "uses a YAML tag kdsr refuses"),
        ("!!python/name:os.system", "uses a YAML tag kdsr refuses"),
        ("[1, 2", "is not valid YAML at line 1"),
        ("{a: 1", "is not valid YAML"),
        ("@home", "is not valid YAML"),
    ],
)
def test_bad_values_are_one_line_naming_the_argument(raw, expected):
    with pytest.raises(KdsrError) as exc:
        _parse_options([f"n_feats={raw}"], "--option")
    message = str(exc.value)
    assert message.startswith(f"--option 'n_feats={raw}' ") and expected in message and "\n" not in message


def test_key_must_be_given():
    with pytest.raises(KdsrError, match="--policy-option '=3' must look like key=value"):
        _parse_options(["=3"], "--policy-option")


def test_profile_option_with_a_tag_exits_2(capsys):
    code = main(["profile", "--backbone", "edsr_baseline", "--scale", "2", "--option", "n_feats=!!python/name:os.system"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("kdsr: error: --option 'n_feats=!!python/name:os.system' uses a YAML tag kdsr refuses")
    assert "Traceback" not in err and err.count("\n") == 1


def test_policy_option_with_a_syntax_error_names_the_flag():
    import argparse

    from kdsr.cli import _router

    args = argparse.Namespace(policy="budget", policy_option=["budget=[0.5"], width=None, branch=None)
    with pytest.raises(KdsrError, match=r"^--policy-option 'budget=\[0.5' is not valid YAML at line 1"):
        _router(args, None)  # options are parsed before any model is opened


def test_overrides_share_the_parser():
    with pytest.raises(KdsrError, match=r"^override 'seed=!!python/name:os.system' uses a YAML tag kdsr refuses"):
        apply_overrides({}, ["seed=!!python/name:os.system"])
    with pytest.raises(KdsrError, match=r"^override 'stages=\[1' is not valid YAML"):
        apply_overrides({}, ["stages=[1"])
    assert apply_overrides({}, ["data.batch_size=4"]) == {"data": {"batch_size": 4}}


def test_duplicate_keys_in_a_value_are_refused():
    with pytest.raises(KdsrError, match="key 'a' appears twice"):
        parse_value("{a: 1, a: 2}", "--option 'x={a: 1, a: 2}'")


def test_plugins_show_lists_declared_bounds(capsys):
    import json

    assert main(["plugins", "show", "edsr_baseline", "--json"]) == 0
    types = {o["name"]: o["type"] for o in json.loads(capsys.readouterr().out)[0]["options"]}
    assert types["n_feats"] == "int >= 1 <= 4096" and types["rgb_mean"] == "tuple[float, ...]"
