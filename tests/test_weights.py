"""Loading weight files: a run's own final weights load as plain network weights elsewhere."""

from __future__ import annotations

import pytest
import torch

from kdsr.engine.checkpoint import collect
from kdsr.errors import KdsrError
from kdsr.weights import load_weights, save_weights, strip_run_prefix
from kdsr_zoo.edsr import edsr_baseline


def test_run_final_weights_load_as_a_teacher(tmp_path):
    torch.manual_seed(0)
    trained = edsr_baseline(scale=2, n_feats=8, n_resblocks=2)
    path = tmp_path / "final.safetensors"
    save_weights(collect({"student": trained}), path)  # what a run writes: keys 'student.head.0.weight', ...
    fresh = edsr_baseline(scale=2, n_feats=8, n_resblocks=2)
    load_weights(fresh, path)
    for (k, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_prefix_kept_when_stripping_does_not_fit(tmp_path):
    state = {"student.head.0.weight": torch.zeros(1), "student.tail.weight": torch.zeros(1)}
    assert strip_run_prefix(state, {"other.weight"}) is state
    assert set(strip_run_prefix(state)) == {"head.0.weight", "tail.weight"}
    assert strip_run_prefix({"a.x": torch.zeros(1), "b.y": torch.zeros(1)}).keys() == {"a.x", "b.y"}
    wrong = tmp_path / "wrong.safetensors"
    save_weights(collect({"student": edsr_baseline(scale=2, n_feats=4, n_resblocks=1)}), wrong)
    with pytest.raises(KdsrError, match="wrong.safetensors"):
        load_weights(edsr_baseline(scale=2, n_feats=8, n_resblocks=2), wrong)
