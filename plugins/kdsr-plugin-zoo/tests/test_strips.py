"""The upsampling tail in row strips at inference: the whole-image result, and only where nothing watches."""

from __future__ import annotations

import torch

import kdsr_zoo.common as common
from kdsr.plugins import registry


def test_strips_equal_the_whole_image_and_leave_taps_alone(monkeypatch):
    monkeypatch.setattr(common, "STRIP_PIXELS", 4 * 20)  # 4-row strips of a 20-wide input: several strips
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
