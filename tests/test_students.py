"""The builtin ``independent`` student constructor: its errors name the stage they are about."""

from __future__ import annotations

import pytest

from kdsr import hookimpl
from kdsr.config import parse_config
from kdsr.engine.build import check_config
from kdsr.errors import KdsrError, PluginError
from tests.conftest import tiny_config
from tests.robust_kit import extra_plugin

WHERE = "stages[1].student.options: student 'independent': "


@pytest.mark.parametrize(
    "student, expected",
    [
        ({"backbone": "edsr_basline"}, "backbone: unknown backbone 'edsr_basline' (did you mean 'edsr_baseline'?)"),
        ({"backbone": "edsr_baseline", "options": {"n_feats": 0}}, "options.n_feats: Input should be greater than or equal to 1 (got 0)"),
        ({"backbone": "edsr_baseline", "options": {"n_feat": 8}}, "options: unknown option 'n_feat' for backbone 'edsr_baseline'"),
    ],
)
def test_errors_name_the_stage(tmp_path, student, expected):
    data = tiny_config(tmp_path)
    data["stages"][1]["student"] = student
    with pytest.raises(KdsrError) as exc:
        check_config(parse_config(data))
    message = str(exc.value)
    assert message.startswith(WHERE + expected) and "\n" not in message, message


def _broken_backbone(scale: int):
    raise TypeError("unsupported operand")


class _Broken:
    @hookimpl
    def register_backbones(self, register):
        register("broken_net", _broken_backbone)


def test_a_broken_backbone_stays_a_plugin_error(tmp_path):
    data = tiny_config(tmp_path)
    data["stages"][1]["student"] = {"backbone": "broken_net"}
    with extra_plugin(_Broken(), "brokenb"), pytest.raises(PluginError, match="plugin 'brokenb' raised TypeError: unsupported operand"):
        check_config(parse_config(data))
