import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# The test models are tiny: one thread is faster than two fighting over small kernels, and it keeps
# timings stable when other work shares the machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


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
