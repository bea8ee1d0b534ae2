"""A small deterministic prompt encoder: a fixed word vocabulary and a learned embedding.

It plays the role of Flux's T5 + CLIP pair: it returns per-token `prompt_embeds` (B, L, D) and a
`pooled_prompt_embeds` (B, D). The empty prompt encodes to padding tokens only and a zero pooled
vector; that is the "unconditional" input CFG uses. Tokenization is a whitespace split over a
closed vocabulary, so the same text always gives the same tokens, on any machine.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .data import DIGIT_WORDS, TEMPLATES

PAD, UNK = 0, 1


def default_vocabulary() -> list[str]:
    words = {w for t in TEMPLATES for w in t.replace("{word}", "").split()}
    return ["<pad>", "<unk>", *sorted(words), *DIGIT_WORDS]


class ToyPromptEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, vocabulary: list[str] | None = None, max_length: int = 8, embed_dim: int = 32):
        super().__init__()
        vocabulary = list(vocabulary or default_vocabulary())
        self.token_embedding = nn.Embedding(len(vocabulary), embed_dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, embed_dim))
        self.mix = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
        )
        self.pool = nn.Linear(embed_dim, embed_dim)
        self._index = {w: i for i, w in enumerate(vocabulary)}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        max_length = self.config.max_length
        ids = torch.full((len(prompts), max_length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if len(words) > max_length:
                raise ValueError(
                    f"prompt has {len(words)} words; the toy prompt encoder takes at most {max_length}: {prompt!r}"
                )
            unknown = [w for w in words if w not in self._index]
            if unknown:
                # An unknown word would silently become <unk>: the model would render from a prompt
                # nobody wrote. Refuse, and say what the encoder knows.
                known = [w for w in self._index if not w.startswith("<")]
                raise ValueError(
                    f"prompt {prompt!r} has words outside the vocabulary: {unknown}; vocabulary: {' '.join(known)}"
                )
            ids[row, : len(words)] = torch.tensor([self._index[w] for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenize(prompts).to(self.position_embedding.device)
        tokens = self.token_embedding(ids) + self.position_embedding
        tokens = tokens + self.mix(tokens)
        keep = (ids != PAD).unsqueeze(-1).to(tokens.dtype)
        # Mean over real tokens; the empty prompt has none and pools to exactly zero.
        pooled = self.pool((tokens * keep).sum(1) / keep.sum(1).clamp(min=1.0)) * (keep.sum(1) > 0)
        return tokens, pooled
