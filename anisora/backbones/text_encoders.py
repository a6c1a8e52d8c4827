"""Prompt encoders shared by backbone families (UMT5 for Wan)."""

from __future__ import annotations

import ftfy
import torch
from torch import nn


def clean_prompt(text: str) -> str:
    """The same normalisation Wan's pipelines apply (ftfy + whitespace), so embeddings match."""
    return " ".join(ftfy.fix_text(text).split())


class UMT5PromptEncoder(nn.Module):
    """Tokenizer + UMT5 encoder, trimmed to each prompt's length and zero-padded like Wan's pipelines."""

    def __init__(self, tokenizer, encoder: nn.Module, max_sequence_length: int, trainable: bool = False) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder.requires_grad_(trainable)
        self.max_sequence_length = max_sequence_length
        self.trainable = trainable

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def forward(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.encoder(ids, mask).last_hidden_state
        keep = mask.gt(0).unsqueeze(-1).to(hidden.dtype)
        return hidden * keep  # same as trimming to each length and padding with zeros
