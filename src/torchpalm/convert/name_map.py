"""The one loop under every HF <-> torchpalm state-dict converter (BERT/RoBERTa/ERNIE in hf.py, DeBERTa-v2 in
deberta.py, ModernBERT in modernbert.py): each family gives its explicit name tables as a `NameMap`.

torchpalm names a layer's tensors `layers.{i}.<name>`; HF puts them under `<layers_at>{i}.` (`encoder.layer.`
for BERT and DeBERTa, `layers.` for ModernBERT). Where HF keeps query, key and value as three linears and
torchpalm fuses them into one `qkv` (rows q, then k, then v), `qkv` names HF's three parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_OUR_LAYER = re.compile(r"layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class NameMap:
    """The name tables of one model family.

    plain: {torchpalm name: HF name} outside the layers (HF's without the base model's prefix); layer: the same
    within a layer (without `layers.{i}.` / `<layers_at>{i}.`); layers_at: HF's layer prefix before the index;
    qkv: HF's names of the three attention projections that torchpalm's `qkv` fuses (empty: HF fuses them too),
    each found at `qkv_at.format(part, 'weight' or 'bias')` in a layer; unprefixed: plain names that HF keeps
    beside the base model in its task models (never given the prefix on the way out: DeBERTa's pooler,
    ModernBERT's prediction head).
    """

    plain: dict[str, str]
    layer: dict[str, str]
    layers_at: str = "encoder.layer."
    qkv: tuple[str, ...] = ()
    qkv_at: str = "attention.self.{}.{}"
    unprefixed: tuple[str, ...] = ()

    def to_torchpalm(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
        """HF tensors (names already without the base model's prefix) in torchpalm names; and the HF names
        used, for the caller's list of what was left out."""
        out: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for ours, theirs in self.plain.items():
            if theirs in state:
                out[ours] = state[theirs]
                used.add(theirs)
        at = re.compile(rf"{re.escape(self.layers_at)}(\d+)\.")
        for i in sorted({int(m.group(1)) for k in state if (m := at.match(k))}):
            prefix = f"{self.layers_at}{i}."
            for ours, theirs in self.layer.items():
                if prefix + theirs in state:
                    out[f"layers.{i}.{ours}"] = state[prefix + theirs]
                    used.add(prefix + theirs)
            for kind in ("weight", "bias") if self.qkv else ():
                keys = [prefix + self.qkv_at.format(part, kind) for part in self.qkv]
                if all(k in state for k in keys):
                    out[f"layers.{i}.qkv.{kind}"] = torch.cat([state[k] for k in keys], dim=0)
                    used.update(keys)
        return out, used

    def to_hf(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """torchpalm tensors in HF names, `prefix` (e.g. 'bert.') before all but the `unprefixed` ones; names
        the tables do not know are left out."""
        out: dict[str, torch.Tensor] = {}
        for ours, theirs in self.plain.items():
            if ours in state:
                out[theirs if ours in self.unprefixed else prefix + theirs] = state[ours]
        for name, value in state.items():
            m = _OUR_LAYER.match(name)
            if not m:
                continue
            hf_prefix, rest = f"{prefix}{self.layers_at}{m.group(1)}.", m.group(2)
            if rest in self.layer:
                out[hf_prefix + self.layer[rest]] = value
            elif self.qkv and rest.startswith("qkv."):
                kind = rest.split(".", 1)[1]
                for part, tensor in zip(self.qkv, value.chunk(3, dim=0), strict=True):
                    out[hf_prefix + self.qkv_at.format(part, kind)] = tensor.contiguous()
        return out
