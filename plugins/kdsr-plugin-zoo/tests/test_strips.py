"""The upsampling tail in row strips at inference: the whole-image result, and only where nothing watches."""

from __future__ import annotations

import torch

import kdsr_zoo.common as common
from kdsr.plugins import registry


def test_strips_equal_the_whole_image_and_leave_taps_alone(monkeypatch):
    monkeypatch.setattr(common, "STRIP_VALUES", 4 * 20 * 8)  # 4-row strips of a 20-wide input at 8 channels: several strips
    torch.manual_seed(0)
    for name, scale in (("edsr_baseline", 4), ("edsr_baseline", 3), ("rcan", 2)):
        options = {"n_feats": 8, "n_resblocks": 1} | ({"n_resgroups": 1, "reduction": 4} if name == "rcan" else {})
        net = registry("backbone").create(name, options, scale=scale).eval()
        x = torch.rand(2, 3, 23, 20)
        with torch.no_grad():
            whole = net(x)
        calls = []
        original = net.tail.forward
        monkeypatch.setattr(net.tail, "forward", lambda t: calls.append(t.shape[2]) or original(t))
        with torch.inference_mode():
            strips = net(x)
        assert len(calls) > 1 and max(calls) <= 4 + 2 * common.TAIL_HALO  # it did run in strips
        assert strips.shape == whole.shape and (strips - whole).abs().max().item() <= 1e-5
        calls.clear()
        seen = []
        handle = net.tail[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape))
        with torch.inference_mode():
            net(x)
        handle.remove()
        assert seen == [torch.Size([2, 8, 23, 20])] and len(calls) == 1  # a tap sees the whole input, once


def test_a_batch_of_small_windows_runs_in_pieces_of_whole_windows(monkeypatch):
    monkeypatch.setattr(common, "STRIP_VALUES", 2 * 6 * 5 * 8)  # two whole 6x5 windows per piece at 8 channels
    torch.manual_seed(0)
    net = registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, scale=2).eval()
    x = torch.rand(5, 3, 6, 5)
    with torch.no_grad():
        whole = net(x)
    calls = []
    original = net.tail.forward
    monkeypatch.setattr(net.tail, "forward", lambda t: calls.append(tuple(t.shape[:3])) or original(t))
    with torch.inference_mode():
        pieces = net(x)
    assert calls == [(2, 8, 6), (2, 8, 6), (1, 8, 6)]  # whole windows, no halo rows recomputed
    assert (pieces - whole).abs().max().item() <= 1e-5
