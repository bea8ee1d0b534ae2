"""Per-sample seeds: a sample's noise depends only on its index (and the run's base seed).

Never on batch size, batch position, GPU count or device: noise is drawn on the CPU from a
generator seeded with `sample_seed(index, base_seed)` and only then moved to the target device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Large odd stride so that (base_seed, index) pairs of different runs do not collide for any
# realistic number of samples (< 1e9 per run).
_BASE_STRIDE = 1_000_000_007


def sample_seed(index: int, base_seed: int = 0) -> int:
    """The integer seed of sample `index` in a run with `base_seed`."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return (base_seed * _BASE_STRIDE + index) % (2**63 - 1)


def sample_generators(indices: Sequence[int], base_seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by index only."""
    return [torch.Generator("cpu").manual_seed(sample_seed(int(i), base_seed)) for i in indices]


def sample_noise(
    shape: Sequence[int],
    indices: Sequence[int],
    base_seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stack of per-sample standard normal noise, shape (len(indices), *shape).

    Drawn in float32 on the CPU, then cast and moved, so the values are the same everywhere.
    """
    noise = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in sample_generators(indices, base_seed)]
    return torch.stack(noise).to(device=device, dtype=dtype)
