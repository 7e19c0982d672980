"""Plugin discovery: entry points one at a time, failure isolation, name clashes, switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsr import Loss, hookimpl
from kdsr.errors import KdsrError
from kdsr.plugins import Plugins
from tests.conftest import install_fake, run_kdsr, tiny_config, write_config

GOOD = '''
import torch
from kdsr import Loss, hookimpl

class L2(Loss):
    def forward(self, student, teacher, batch):
        return torch.mean((student.sr - batch.hr) ** 2)

def l2() -> Loss:
    """Mean squared error to HR (a test plugin)."""
    return L2()

@hookimpl
def register_losses(register):
    register("my_l2", l2)
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    install_fake(site, "kdsr-good", "good_plugin", GOOD, entry="good")
    install_fake(site, "kdsr-broken", "broken_plugin", "raise RuntimeError('boom at import')\n", entry="broken")
    return site


def test_broken_plugin_listed_as_failed_and_good_one_works(site, tmp_path):
    env = {"PYTHONPATH": str(site)}
    out = run_kdsr("plugins", "list", env=env)
    assert out.returncode == 0, out.stderr
    assert "broken (0.1): FAILED: RuntimeError: boom at import" in out.stdout
    assert "good (0.1)" in out.stdout and "my_l2" in out.stdout
    req = run_kdsr("plugins", "list", "--requirements", env=env)
    assert "kdsr-good==0.1" in req.stdout and "kdsr-broken" not in req.stdout

    cfg = tiny_config(tmp_path, steps=2)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0]["losses"] = [{"name": "my_l2"}]
    run = run_kdsr("run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    assert "good" in (tmp_path / "run" / "config.resolved.yaml").read_text()


def test_switches(site):
    env = {"PYTHONPATH": str(site), "KDSR_DISABLE_PLUGINS": "broken"}
    out = run_kdsr("plugins", "list", env=env)
    assert "broken" not in out.stdout and "good (0.1)" in out.stdout
    only = run_kdsr("plugins", "list", env={"PYTHONPATH": str(site), "KDSR_PLUGINS": "good"})
    assert "good (0.1)" in only.stdout and "broken" not in only.stdout and "zoo" not in only.stdout
    missing = run_kdsr("plugins", "list", env={"KDSR_PLUGINS": "nothere"})
    assert missing.returncode == 2 and "nothere" in missing.stderr


class _Dup:
    @hookimpl
    def register_losses(self, register):
        register("l1", lambda: None)


def test_duplicate_name_names_both_plugins():
    plugins = Plugins()
    plugins.load_builtins()
    info = plugins.add(_Dup(), "dup")
    assert not info.ok
    assert "'builtin.losses'" in info.error and "'dup'" in info.error
    assert "l1" in plugins.registry("loss")  # the builtin keeps its name


class _Raises:
    @hookimpl
    def register_losses(self, register):
        register("half", lambda: None)
        raise ValueError("bad registration")


def test_plugin_raising_while_registering_is_rolled_back():
    plugins = Plugins()
    info = plugins.add(_Raises(), "raises")
    assert info.error == "ValueError: bad registration"
    assert "half" not in plugins.registry("loss")


def test_options_are_validated_from_the_signature():
    plugins = Plugins()
    plugins.load_builtins()
    losses = plugins.registry("loss")
    assert isinstance(losses.create("output_kd", {"alpha": 0.3}), Loss)
    with pytest.raises(KdsrError, match="unknown option 'alfa' for loss 'output_kd' \\(did you mean 'alpha'\\?\\)"):
        losses.create("output_kd", {"alfa": 0.3}, where="stages[1].losses[0].options")
    with pytest.raises(KdsrError, match="alpha"):
        losses.create("output_kd", {"alpha": "lots"})
    with pytest.raises(KdsrError, match="unknown loss 'outputkd' \\(did you mean 'output_kd'\\?\\)"):
        losses.get("outputkd")
