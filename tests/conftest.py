import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# The test models are tiny: one thread is faster than two fighting over small kernels, and it keeps
# timings stable when other work shares the machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    """Every test starts from the same global RNG state, whatever ran before it (any order, alone or
    in the suite). Tests that need randomness should still draw from explicit generators; this only
    makes a forgotten one deterministic instead of order-dependent. Module- and session-scoped
    fixtures are set up before this runs, so they seed themselves."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, config):
    # pytest-randomly shuffles the order; its seed is in the header, which `-q` hides. Print it in the
    # summary (shown with -q) so that a failure that depends on the order can be replayed.
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(
            f"random test order: seed {seed}; replay it with --randomly-seed={seed} (-p no:randomly runs in file order)"
        )


@pytest.fixture
def random_toy_pipeline():
    """A ToyPipeline with random weights, built in code (no checkpoint needed)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ditguide.toy.pipeline import ToyPipeline
    from ditguide.toy.prompt_encoder import ToyPromptEncoder
    from ditguide.toy.train import ToyTrainConfig, build_toy_transformer

    torch.manual_seed(0)
    pipe = ToyPipeline(
        transformer=build_toy_transformer(ToyTrainConfig()).eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        prompt_encoder=ToyPromptEncoder().eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
