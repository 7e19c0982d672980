"""A run's final weights keep their branch prefix, which may hold dots (``w1.0.``) or cover more than the
network (``student.backbone.`` next to ``student.heads.``); both load as the plain network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsr.engine.checkpoint import collect
from kdsr.errors import KdsrError
from kdsr.weights import load_weights, save_weights, strip_run_prefix
from kdsr_zoo.edsr import edsr_baseline

OPTIONS = {"n_feats": 8, "n_resblocks": 2}


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return edsr_baseline(scale=2, **OPTIONS)


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("branch", ["w1.0", "w0.25", "student", "a.b.c"])
def test_dotted_branch_prefix_is_stripped(tmp_path, branch):
    trained = net(0)
    path = tmp_path / "final.safetensors"
    save_weights(collect({branch: trained}), path)  # e.g. 'w1.0.head.0.weight': a CSSR-Net's width branch
    fresh = net(1)
    load_weights(fresh, path)
    assert same(fresh, trained)


def test_network_inside_a_larger_run_file_loads(tmp_path):
    """An HKDSR student's file: ``student.backbone.*`` is the plain network, ``student.heads.*`` training-only."""
    wrapper = nn.Module()
    wrapper.backbone, wrapper.heads = net(0), nn.ModuleList([nn.Conv2d(8, 8, 3)])
    path = tmp_path / "final.safetensors"
    save_weights(collect({"student": wrapper}), path)
    fresh = net(1)
    load_weights(fresh, path)
    assert same(fresh, wrapper.backbone)


def test_prefix_choice():
    t = torch.zeros(1)
    expected = {"head.0.weight", "tail.weight"}
    assert set(strip_run_prefix({"w0.5.head.0.weight": t, "w0.5.tail.weight": t}, expected)) == expected
    # a non-strict load: every stripped key is expected, some expected keys are absent
    assert set(strip_run_prefix({"w0.5.head.0.weight": t}, expected)) == {"head.0.weight"}
    # nothing fits: the file is returned as it is, and loading reports its keys
    state = {"w0.5.body.weight": t, "w0.5.tail.weight": t}
    assert strip_run_prefix(state, expected) is state


def test_file_of_another_width_still_fails_clearly(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_weights(collect({"w1.0": edsr_baseline(scale=2, n_feats=16, n_resblocks=2)}), path)
    with pytest.raises(KdsrError, match="wide.safetensors.*shape mismatch"):
        load_weights(net(), path)
