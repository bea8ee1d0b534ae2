"""The README's commands are correct for the locked environment (issue 10, "Done when")."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _commands(module: str) -> list[list[str]]:
    """Every `python -m ditguide.<module> ...` command in the README's code blocks, continuation lines joined."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        m = re.search(rf"(?:python|accelerate launch .*?) -m ditguide\.{module}\b(.*)", line)
        if m:
            out.append(shlex.split(m.group(1)))
    return out


def test_readme_has_no_stale_advice():
    assert "huggingface-cli" not in README  # the locked huggingface_hub has `hf download`
    assert "../shared" not in README  # the repository stands alone
    assert "dvc pull" not in README  # no DVC remote behind it


@pytest.mark.parametrize("module", ["generate", "coco"])
def test_readme_commands_parse(module, monkeypatch):
    """Each command's arguments are accepted by the module's own parser (nothing runs)."""
    import importlib

    import ditguide.cli

    mod = importlib.import_module(f"ditguide.{module}")
    commands = _commands(module)
    assert commands, f"no `python -m ditguide.{module}` command found in the README"
    ran = []
    fake = lambda body, **kw: ran.append(kw) or 0  # noqa: E731
    monkeypatch.setattr(ditguide.cli, "run_reporting_user_errors", fake)
    monkeypatch.setattr(mod, "run_reporting_user_errors", fake, raising=False)
    for args in commands:
        assert mod.main(args) == 0, args  # argparse exits with 2 on an unknown flag or a bad choice
    assert len(ran) == len(commands)


def test_readme_guidance_example_runs_on_the_digit_toy():
    """The README's `preset("slg", cfg_scale=1.5, blocks=["single:1"])` is valid on the toy's blocks."""
    from ditguide.guidance import GuidanceSpec, preset
    from ditguide.profiles import load_profile
    from ditguide.render import check_against_config

    assert 'preset("slg", cfg_scale=1.5, blocks=["single:1"])` on the digit toy' in README
    spec = GuidanceSpec.from_dict(preset("slg", cfg_scale=1.5, blocks=["single:1"]))
    check_against_config(load_profile("toy", REPO / "params.yaml"), {"slg": spec}, root=REPO)
