"""Config validation found in review (issues 15.10, 15.13, 19.4-19.7): what would fail or misbehave at run
time is refused by validation, in one line, before a run directory exists."""

from __future__ import annotations

import pytest
import torch
import yaml

from kdsr.cli import main
from kdsr.config import MEMORY_SHARE, batch_bytes, load_config, parse_config, read_yaml, total_memory
from kdsr.engine.build import check_config
from kdsr.errors import KdsrError
from tests.conftest import tiny_config, write_config


def refused(data: dict, *, build: bool = False) -> str:
    """The one-line message validation gives for ``data`` (``build``: also resolve plugins, as `kdsr validate`)."""
    with pytest.raises(KdsrError) as exc:
        config = parse_config(data)
        if build:
            check_config(config)
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- 19.6 duplicate keys


def test_duplicate_key_names_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nscale: 2\ndata:\n  batch_size: 4\n  patch_size: 12\n  batch_size: 8\n")
    with pytest.raises(KdsrError) as exc:
        read_yaml(path)
    assert str(exc.value) == f"config '{path}': key 'batch_size' appears twice in one mapping (lines 4 and 6); keep one of them"


def test_merge_keys_may_be_overridden_and_plain_yaml_still_loads(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 1.0, gamma: 0.5}\nopt:\n  <<: *b\n  lr: 2.0\n")
    assert read_yaml(path)["opt"] == {"lr": 2.0, "gamma": 0.5}


def test_duplicate_key_refused_by_validate(tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    path.write_text(path.read_text() + "seed: 3\n")  # a second top-level 'seed'
    assert main(["validate", str(path)]) == 2
    assert "key 'seed' appears twice" in capsys.readouterr().err


# ---------------------------------------------------------------- 19.4 run names


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "a\\b", "", ".", "..", ".hidden"])
def test_run_name_is_a_name(tmp_path, name):
    data = tiny_config(tmp_path, name=name)
    assert "must be a plain name" in refused(data)


def test_plain_names_pass(tmp_path):
    for name in ("run", "csd_edsr-x4.v2", "0"):
        assert parse_config(tiny_config(tmp_path, name=name)).name == name


# ---------------------------------------------------------------- 19.5 bounds


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(seed=2**70), "'seed': Input should be less than or equal to 4294967295"),
        (lambda c: c.update(seed=-1), "'seed': Input should be greater than or equal to 0"),
        (lambda c: c["stages"][0].update(steps=10**15), "'stages.0.steps': Input should be less than or equal to 1000000000"),
        (lambda c: c["stages"][0].update(steps=1.0e30), "'stages.0.steps'"),
        (lambda c: c["stages"][0].update(log_every=10**12), "'stages.0.log_every'"),
        (lambda c: c["stages"][0].update(scheduler={"name": "multistep", "milestones": [0]}), "'stages.0.scheduler.milestones.0'"),
        (lambda c: c["stages"][0].update(optimizer={"lr": float("nan")}), "'stages.0.optimizer.lr': Input should be a finite number"),
        (lambda c: c["stages"][0].update(optimizer={"betas": [0.9, 1.5]}), "'stages.0.optimizer.betas.1'"),
        (lambda c: c["stages"][0]["losses"].__setitem__(0, {"name": "l1", "weight": float("inf")}), "'stages.0.losses.0.weight'"),
        (lambda c: c["profile"].update(hr_size=[0, 32]), "'profile.hr_size.0'"),
        (lambda c: c.update(threads=10**9), "'threads'"),
    ],
)
def test_numbers_out_of_range_are_refused(tmp_path, mutate, expected):
    data = tiny_config(tmp_path)
    data["stages"][0]["losses"] = [{"name": "l1"}]
    mutate(data)
    assert expected in refused(data)


def test_largest_seed_is_accepted(tmp_path):
    assert parse_config(tiny_config(tmp_path, seed=2**32 - 1)).seed == 2**32 - 1


# ---------------------------------------------------------------- 19.7 steps: 0


def test_zero_steps_is_refused_with_the_alternative(tmp_path):
    data = tiny_config(tmp_path)
    data["stages"][0]["steps"] = 0
    assert refused(data) == (
        "config: 'stages.0.steps': a stage must train at least 1 step (got 0); to score existing weights use `kdsr eval`"
    )


# ---------------------------------------------------------------- 15.10 option ranges and memory


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"n_feats": 0}, "n_feats: Input should be greater than or equal to 1 (got 0)"),
        ({"n_feats": -4}, "n_feats: Input should be greater than or equal to 1 (got -4)"),
        ({"n_feats": 1000000}, "n_feats: Input should be less than or equal to 4096 (got 1000000)"),
        ({"n_resblocks": -1}, "n_resblocks: Input should be greater than or equal to 1 (got -1)"),
        ({"res_scale": 0}, "res_scale: Input should be greater than 0"),
    ],
)
def test_backbone_option_ranges_fail_validation(tmp_path, options, expected):
    data = tiny_config(tmp_path)
    data["stages"][0]["student"]["options"].update(options)
    assert expected in refused(data, build=True)


def test_option_range_refused_before_run_directory_exists(tmp_path, capsys):
    data = tiny_config(tmp_path)
    data["stages"][1]["student"]["options"]["n_feats"] = 0  # the second stage: fails late without validation
    path = write_config(tmp_path / "c.yaml", data)
    assert main(["run", str(path), "--quiet"]) == 2
    assert "n_feats" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, options",
    [
        ("rcan", {"n_resgroups": 0}),
        ("rcan", {"reduction": 0}),
        ("carn_m", {"group": 0}),
        ("imdn", {"distillation_rate": 1.5}),
        ("swinir_light", {"depths": [6, 0]}),
        ("swinir_light", {"embed_dim": 0}),
    ],
)
def test_zoo_factories_declare_bounds(tmp_path, name, options):
    data = tiny_config(tmp_path)
    data["stages"][0]["student"] = {"backbone": name, "options": options}
    key = next(iter(options))
    assert key in refused(data, build=True)


def test_batch_that_cannot_fit_in_memory_is_refused(tmp_path):
    data = tiny_config(tmp_path)
    data["data"]["batch_size"] = 1_000_000_000
    message = refused(data)
    assert message.startswith("config: data.batch_size 1000000000 cannot fit in memory")
    assert "lower batch_size or patch_size" in message


def test_memory_rule_is_the_batch_tensors_against_ram(tmp_path):
    config = parse_config(tiny_config(tmp_path))  # batch 2, patch 12, x2
    assert batch_bytes(config.data, config.scale) == 2 * 3 * 12**2 * (1 + 4) * 4
    ram = total_memory()
    assert ram is not None and ram > 0
    largest = int(MEMORY_SHARE * ram // batch_bytes(config.data.model_copy(update={"batch_size": 1}), 2))
    data = tiny_config(tmp_path)
    data["data"]["batch_size"] = largest
    assert parse_config(data).data.batch_size == largest  # at the limit: accepted
    data["data"]["batch_size"] = largest + 1
    assert "cannot fit in memory" in refused(data)


# ---------------------------------------------------------------- 15.13 what fails at run time


def test_validate_checks_the_device(tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, device="gpu"))
    assert main(["validate", str(path)]) == 2
    assert "device 'gpu' is not a torch device" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_validate_refuses_cuda_without_cuda(tmp_path):
    assert "CUDA is not available" in refused(tiny_config(tmp_path, device="cuda"), build=True)


def test_validate_refuses_a_cuda_index_the_machine_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    message = refused(tiny_config(tmp_path, device="cuda:3"), build=True)
    assert message == "device 'cuda:3': this machine has 1 CUDA device(s); use cuda:0 .. cuda:0 or auto"


@pytest.mark.parametrize("device", ["meta", "mps"] if not torch.backends.mps.is_available() else ["meta"])
def test_validate_refuses_devices_that_cannot_train_here(tmp_path, device):
    assert "is not available on this machine" in refused(tiny_config(tmp_path, device=device), build=True)


def csd_config(tmp_path, batch_size: int, widths=(1.0, 0.5), **csd_options) -> dict:
    data = tiny_config(tmp_path)
    data["data"]["batch_size"] = batch_size
    small = [f"w{float(w)}" for w in widths][-1]
    data["stages"][1] = {
        "name": "csd",
        "steps": 2,
        "student": {
            "constructor": "cssr",
            "options": {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}, "widths": list(widths)},
        },
        "losses": [{"name": "l1", "student": "w1.0"}, {"name": "csd", "student": small, "teacher": "w1.0", "options": csd_options}],
    }
    return data


@pytest.mark.filterwarnings("ignore:csd loss")
def test_validate_refuses_csd_batch_smaller_than_negatives(tmp_path):
    message = refused(csd_config(tmp_path, batch_size=4, num_negatives=10), build=True)
    assert message == (
        "stages[1].losses[1]: loss 'csd': negatives 'batch' needs a batch of at least 10 images (num_negatives 10), "
        "got 4; raise data.batch_size or lower num_negatives"
    )
    check_config(parse_config(csd_config(tmp_path, batch_size=10, num_negatives=10)))  # enough: accepted
    assert "more than 4" in refused(csd_config(tmp_path, batch_size=4, num_negatives=4, negatives="other"), build=True)


def test_validate_refuses_facd_with_a_batch_of_one(tmp_path):
    data = tiny_config(tmp_path)
    data["data"]["batch_size"] = 1
    data["stages"][1]["losses"] = [{"name": "facd"}]
    assert "needs data.batch_size >= 2" in refused(data, build=True)


@pytest.mark.filterwarnings("ignore:csd loss")
def test_validate_refuses_a_width_that_leaves_no_channel(tmp_path):
    data = csd_config(tmp_path, batch_size=10, widths=(1.0, 0.1))  # int(8 * 0.1) == 0 channels
    assert "width 0.1" in refused(data, build=True)


def test_loss_check_config_default_accepts(tmp_path):
    from kdsr import Loss

    config = parse_config(tiny_config(tmp_path))
    assert Loss().check_config(config, config.stages[0]) is None


def test_config_file_round_trip_keeps_bounds(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    config = load_config(path)
    assert parse_config(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))) == config


# ---------------------------------------------------------------- 19.8 the pickle refusal


def test_pickle_refusal_says_what_kdsr_reads_and_how_to_convert(tmp_path):
    import argparse
    import re

    from kdsr.weights import read_state_dict

    path = tmp_path / "official.pt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "args": argparse.Namespace(scale=2)}, path)
    with pytest.raises(KdsrError) as exc:
        read_state_dict(path)
    message = str(exc.value)
    assert "\n" not in message and "\x1b" not in message
    assert "Re-running" not in message and "add_safe_globals" not in message  # none of PyTorch's advice
    assert "it would build argparse.Namespace" in message
    assert "kdsr reads safetensors or a plain state dict" in message and "only if you trust the file" in message
    snippet = re.search(r'python -c "(.*)"$', message).group(1)
    exec(snippet, {})  # the conversion it offers works, and kdsr reads its output
    assert torch.equal(read_state_dict(tmp_path / "official.safetensors")["w"], torch.arange(4.0))
