"""Config loading: YAML safety, typed validation, overrides, and one-line errors naming the key."""

from __future__ import annotations

import pytest

from kdsr.config import apply_overrides, dump_config, load_config, parse_config, read_yaml
from kdsr.errors import KdsrError
from tests.conftest import tiny_config, write_config


def test_defaults_filled_and_round_trip(tmp_path):
    cfg = parse_config(tiny_config(tmp_path))
    assert cfg.stages[0].optimizer.name == "adam"
    assert cfg.stages[0].student.constructor == "independent"  # backbone shorthand
    assert cfg.stages[0].student.options["backbone"] == "edsr_baseline"
    again = parse_config(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["stages"][0].update(stpes=3), "unknown key 'stages.0.stpes' (did you mean 'steps'?)"),
        (lambda c: c.update(scale="four"), "'scale': Input should be a valid integer"),
        (lambda c: c["stages"][1]["teacher"].update(from_stage="teachr"), "not an earlier stage (did you mean 'teacher'?)"),
        (lambda c: c["stages"][0].pop("steps"), "missing required key 'stages.0.steps'"),
        (lambda c: c["data"].update(batch_size=0), "'data.batch_size': Input should be greater than or equal to 1"),
    ],
)
def test_errors_name_the_key(tmp_path, mutate, expected):
    data = tiny_config(tmp_path)
    mutate(data)
    with pytest.raises(KdsrError) as exc:
        parse_config(data)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_python_tags_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nscale: 2\n")
    with pytest.raises(KdsrError, match="YAML tag kdsr refuses"):
        read_yaml(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(KdsrError, match="not valid YAML at line"):
        read_yaml(bad)
    with pytest.raises(KdsrError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")


def test_overrides(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    cfg = load_config(path, ["stages.0.steps=3", "stages.1.optimizer.lr=1e-3", "data.patch_size=16", "name=other"])
    assert cfg.stages[0].steps == 3
    assert cfg.stages[1].optimizer.lr == pytest.approx(1e-3)
    assert cfg.data.patch_size == 16 and cfg.name == "other"
    with pytest.raises(KdsrError, match="must look like key.path=value"):
        apply_overrides({}, ["oops"])
    with pytest.raises(KdsrError, match="not an index"):
        apply_overrides({"stages": []}, ["stages.3.steps=1"])


def test_overrides_may_follow_flags(tmp_path, capsys):
    from kdsr.cli import main

    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    assert main(["validate", str(path), "--print", "stages.0.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out
