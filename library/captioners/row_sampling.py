"""Sampling with one random generator per batch row, so a row's text does not depend on the rows beside it."""

from __future__ import annotations

from typing import Sequence


class RowSampler:
    """A transformers logits processor that samples each row itself (temperature, top-k, top-p) from that row's own
    torch.Generator and leaves only the chosen token possible, so generate()'s own draw just takes it.

    Use with generate(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, logits_processor=[RowSampler(...)]).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0, top_k: int | None = None):
        self.seeds, self.temperature, self.top_p, self.top_k = list(seeds), temperature, top_p, top_k
        self.generators = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(int(s)) for s in self.seeds]
        logits = scores.float() / max(self.temperature, 1e-6)
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            drop = cumulative > self.top_p
            drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
            drop[..., 0] = False
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)
