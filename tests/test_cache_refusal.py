"""Caches under guidance (issue 14, item 4, in part): a diffusers cache enabled on a transformer that
GuidedDenoiser drives with more than one branch is refused before sampling, as is a guider that edits
blocks of a cached model. Whether cache + plain CFG under GuidedDenoiser equals the cache's own CFG
is not tested yet."""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

from ditguide.denoiser import GuidanceError, GuidedDenoiser
from ditguide.edits import EditError, attach_edits
from ditguide.families.tiny import tiny_transformer
from ditguide.guidance import StepInfo, preset

CACHES = {"FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.2), "TaylorSeer": TaylorSeerCacheConfig}


@pytest.mark.parametrize("cache", sorted(CACHES))
def test_multi_branch_guidance_on_a_cached_transformer_is_refused(cache):
    model = tiny_transformer("flux")
    model.enable_cache(CACHES[cache]())
    negative = {"encoder_hidden_states": torch.zeros(1, 6, 32), "pooled_projections": torch.zeros(1, 32)}
    den = GuidedDenoiser(model, preset("cfg"), clock=lambda: StepInfo(0, 1), negative=negative)
    with pytest.raises(GuidanceError, match=r"has a diffusers cache enabled.*disable_cache\(\)"):
        den.check_ready()
    with pytest.raises(EditError, match=r"stateful diffusers hooks \(caches\)"):
        attach_edits(model, "skip:single:0")
    # One branch (guidance off) is the cache's own business: allowed.
    GuidedDenoiser(model, None, clock=lambda: StepInfo(0, 1)).check_ready()
    model.disable_cache()
    den.check_ready()
