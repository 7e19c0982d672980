"""Metric options from a config (issue 18.4): RGB or Y, any shave, and EDSR's DIV2K-validation habit
(shave = scale + 6), each reported under a label that says which variant ran."""

from __future__ import annotations

import pytest
import torch
import yaml

from kdsr import metrics
from kdsr.config import dump_config, parse_config
from kdsr.engine.build import build_eval_sets, build_metrics, check_config
from kdsr.engine.evaluate import evaluate
from kdsr.errors import KdsrError
from kdsr.report import describe_metric
from tests.conftest import tiny_config


def with_metrics(tmp_path, metric_list) -> dict:
    data = tiny_config(tmp_path)
    data["eval"] = {"metrics": metric_list}
    return data


def pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(3, 40, 36, generator=g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return metrics.quantize(sr), metrics.quantize(hr)


def test_config_accepts_metric_options_and_keeps_the_short_form(tmp_path):
    config = parse_config(with_metrics(tmp_path, ["psnr", {"name": "psnr", "options": {"y_channel": False}}, "ssim"]))
    check_config(config)
    dumped = yaml.safe_load(dump_config(config))["eval"]["metrics"]
    assert dumped == ["psnr", {"name": "psnr", "options": {"y_channel": False}, "label": None}, "ssim"]
    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_labels_name_the_variant_and_scores_follow_the_options(tmp_path):
    specs = [
        "psnr",
        {"name": "psnr", "options": {"y_channel": False}},
        {"name": "psnr", "options": {"y_channel": False, "shave": "scale+6"}},
        {"name": "ssim", "options": {"shave": 0}},
        {"name": "psnr", "options": {"y_channel": True}},  # the default, given explicitly
        {"name": "psnr", "options": {"shave": 3}, "label": "psnr_s3"},
    ]
    config = parse_config(with_metrics(tmp_path, specs[:4] + specs[5:]))
    built = build_metrics(config)
    assert list(built) == ["psnr", "psnr[y_channel=false]", "psnr[y_channel=false,shave=scale+6]", "ssim[shave=0]", "psnr_s3"]
    sr, hr = pair()
    scale = config.scale
    assert built["psnr"](sr, hr, scale) == metrics.psnr(sr, hr, scale)
    assert built["psnr[y_channel=false]"](sr, hr, scale) == metrics.psnr(sr, hr, scale, y_channel=False)
    assert built["psnr[y_channel=false,shave=scale+6]"](sr, hr, scale) == metrics.psnr(sr, hr, scale + 6, y_channel=False)
    assert built["ssim[shave=0]"](sr, hr, scale) == metrics.ssim(sr, hr, 0)
    assert built["psnr_s3"](sr, hr, scale) == metrics.psnr(sr, hr, 3)
    assert len({round(f(sr, hr, scale), 9) for f in built.values()}) == len(built)  # the variants really differ
    # an option equal to its default changes nothing, so the label is the plain name: a duplicate here
    with pytest.raises(KdsrError, match=r"eval.metrics\[1\]: a second metric reported as 'psnr'"):
        build_metrics(parse_config(with_metrics(tmp_path, ["psnr", specs[4]])))


def test_evaluation_reports_under_the_labels(tmp_path):
    config = parse_config(with_metrics(tmp_path, ["psnr", {"name": "psnr", "options": {"y_channel": False, "shave": "scale+6"}}]))
    results = evaluate({}, build_eval_sets(config), build_metrics(config), config.scale, torch.device("cpu"), progress=False)
    scores = next(iter(results["bicubic"].values()))
    assert set(scores) == {"psnr", "psnr[y_channel=false,shave=scale+6]"}
    assert scores["psnr"] != scores["psnr[y_channel=false,shave=scale+6]"]


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"shave": -1}, "shave"),
        ({"shave": "scale+7"}, "shave"),
        ({"y_channel": "maybe"}, "y_channel"),
        ({"shve": 2}, "unknown option 'shve'"),
    ],
)
def test_bad_metric_options_fail_validation(tmp_path, options, expected):
    config = parse_config(with_metrics(tmp_path, [{"name": "psnr", "options": options}]))
    with pytest.raises(KdsrError) as exc:
        check_config(config)
    assert expected in str(exc.value) and str(exc.value).startswith("eval.metrics[0]")


def test_border_resolves_the_shave():
    assert metrics.border("scale", 4) == 4
    assert metrics.border("scale+6", 4) == 10  # EDSR-PyTorch utility.calc_psnr on DIV2K validation
    assert metrics.border(0, 4) == 0 and metrics.border(7, 2) == 7
    for bad in (-1, True, "6", 1.5):
        with pytest.raises(KdsrError, match="shave must be"):
            metrics.border(bad, 2)


def test_protocol_describes_each_variant():
    assert describe_metric("psnr", 3) == "PSNR on Y (BT.601 MATLAB rgb2ycbcr, [16, 235]), shave 3 px"
    assert describe_metric({"name": "psnr", "options": {"y_channel": False, "shave": "scale+6"}}, 3) == "PSNR on RGB, shave 9 px"
