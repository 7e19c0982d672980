"""The ``hkdsr`` backbone and student constructor check their options with one-line errors under the
config entry they are about: the inner backbone's bounds (``kdsr.bounds``) and the head taps."""

from __future__ import annotations

import pytest

from kdsr.config import parse_config
from kdsr.engine.build import check_config
from kdsr.errors import KdsrError
from kdsr.plugins import registry
from tests.conftest import tiny_config

WHERE = "stages[0].teacher.options: backbone 'hkdsr': "


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"backbone": "edsr_baseline", "options": {"n_feats": 0}}, "options.n_feats: Input should be greater than or equal to 1 (got 0)"),
        ({"backbone": "rcan", "options": {"n_resgroups": 2000}}, "options.n_resgroups: Input should be less than or equal to 1024 (got 2000)"),
        ({"backbone": "rcan", "options": {"n_feats": 100000}}, "options.n_feats: Input should be less than or equal to 4096"),
        ({"backbone": "edsr_baseline", "heads": []}, "heads: [] attaches no head"),
        ({"backbone": "edsr_baseline", "heads": ["body.0", "body.0"]}, "heads lists tap 'body.0' twice"),
        ({"backbone": "edsr_basline"}, "backbone: unknown backbone 'edsr_basline'"),
    ],
)
def test_backbone_options_are_checked(options, expected):
    with pytest.raises(KdsrError) as exc:
        registry("backbone").create("hkdsr", options, where="stages[0].teacher.options", scale=2)
    message = str(exc.value)
    assert message.startswith(WHERE + expected) and "\n" not in message, message


def test_student_errors_name_the_stage(tmp_path):
    data = tiny_config(tmp_path)
    data["stages"][1]["student"] = {"constructor": "hkdsr", "options": {"backbone": "edsr_baseline", "options": {"n_resblocks": 0}}}
    with pytest.raises(KdsrError) as exc:
        check_config(parse_config(data))
    assert str(exc.value).startswith("stages[1].student.options: student 'hkdsr': options.n_resblocks: Input should be greater"), exc.value
    data["stages"][1]["student"] = {"constructor": "hkdsr", "options": {"heads": []}}  # on a copy of the teacher
    with pytest.raises(KdsrError, match=r"^stages\[1\]\.student\.options: student 'hkdsr': heads: \[\] attaches no head"):
        check_config(parse_config(data))
