"""Several household heads trained side by side on the same encoder, shipped as one model.

A head trained on a household's minutes of speech overfits (training accuracy per step 0.9, validation 0.2) and two
seeds differ by several points. Averaging two independently trained heads' embeddings was better than either on
every figure of the development split (P2's training audio, 2026-11-27): in quiet after 0.5 / 1 / 2 s 62.7 / 90.2 /
96.4% against 58.0 / 84.5 / 92.7% and 56.0 / 86.0 / 96.4%; at 10 dB after 2 s 71.5% against 59.6% and 60.1%.

The average costs nothing at run time beyond a wider GRU: K GRUs of H units are one GRU of K x H units whose
recurrent weights are block-diagonal (each gate's rows and columns in K blocks), K output projections are one over
the concatenated units, and the K learnt projections of the encoder's embedding average into one. So the merged
model is an ordinary EncoderSpeakerModel with `head_hidden` = K x H, and the model file's format does not change.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from spkidd.encoder_model import EncoderSpeakerModel

GATES = 3
"""nn.GRU stacks its reset, update and new gates' rows in this order."""


def merged_heads(heads: list[EncoderSpeakerModel]) -> EncoderSpeakerModel:
    """One model whose head embedding is the mean of the heads' (same encoder, same dropout). Its speaker
    references and embedding centre are the first head's until the trainer installs centroids."""
    first = heads[0]
    if len(heads) == 1:
        return first
    k, units = len(heads), first.config.head_hidden
    if any(h.config != first.config for h in heads):
        raise ValueError("only heads of one configuration can be merged")
    merged = EncoderSpeakerModel(replace(first.config, head_hidden=k * units))
    state = {name: tensor for name, tensor in first.state_dict().items() if not name.startswith(("gru.", "adapt."))}
    with torch.no_grad():
        state["adapt.weight"] = torch.stack([h.adapt.weight for h in heads]).mean(dim=0)
        state["adapt.bias"] = torch.stack([h.adapt.bias for h in heads]).mean(dim=0)
        state["from_gru.weight"] = torch.cat([h.from_gru.weight for h in heads], dim=1) / k
        grus = [h.gru.state_dict() for h in heads]
        for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            per_gate = [g[name].reshape(GATES, units, -1) for g in grus]
            state[f"gru.{name}"] = torch.cat(per_gate, dim=1).reshape(GATES * k * units, -1).squeeze(-1)
        recurrent = torch.zeros(GATES, k * units, k * units)
        for i, g in enumerate(grus):
            block = slice(i * units, (i + 1) * units)
            recurrent[:, block, block] = g["weight_hh_l0"].reshape(GATES, units, units)
        state["gru.weight_hh_l0"] = recurrent.reshape(GATES * k * units, k * units)
    merged.load_state_dict(state)
    return merged.eval()
