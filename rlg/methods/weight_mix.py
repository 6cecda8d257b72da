"""Weight mixing: one network with theta_base + w (theta_rl - theta_base) (knob w).

Interpolation (0 < w < 1) is the rewarded-soups / WiSE-FT mix, extrapolation (w > 1) ExPO's. For a
LoRA pair theta_rl - theta_base is the adapter's update ``scaling * B A``, so the mix is the adapter
scale: every LoRA layer's ``scaling`` becomes w times its loaded value (PEFT's ``set_scale``, what
diffusers' ``set_adapters(weights=w)`` does). For a full-weight pair the mixed network is built once
per w (``mixed_state_dict``) and kept while the calls of that w run: one extra copy of the denoiser
in memory (``network_bytes``). w = 0 and w = 1 run the base and the RL network themselves, so they
equal the stock pipelines bit for bit (``b + 1 * (r - b)`` is not always ``r`` in floating point).
One network row per image and step (two with CFG), as for either model alone.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any, Iterator

from rlg.methods.base import Arm, Method, MethodError

log = logging.getLogger(__name__)


class WeightMix(Method):
    name = "weight_mix"
    uses_model = False

    def __init__(self, knobs, model: str = "rl", pick: str | None = None):
        super().__init__(knobs, model, pick)
        if pick is not None or model != "rl":
            raise MethodError("method weight_mix mixes base and RL weights; it takes no model or pick setting")
        self._cache: dict[Any, Any] = {}  # (denoiser id, w) -> mixed network (one entry at a time)

    def arms(self) -> list[Arm]:
        out = []
        for w in self.knobs:
            if w in (0.0, 1.0):  # the base / RL network itself
                out.append(Arm(self.name, w, scale=w))
            else:
                out.append(Arm(self.name, w, scale=1.0, mix=w))
        return out

    @contextlib.contextmanager
    def applied(self, denoiser: Any, arm: Arm) -> Iterator[None]:
        if arm.mix is None:
            yield
            return
        if denoiser.is_lora_pair:
            with lora_scaled(denoiser.base, denoiser.rl_adapter, arm.mix):
                yield
            return
        key = (id(denoiser), arm.mix)
        if key not in self._cache:
            self._cache.clear()  # one mixed network resident at a time: the loop runs each w's calls together
            self._cache[key] = mixed_network(denoiser.base, denoiser.rl, arm.mix)
            log.info("weight_mix: built the network at w=%g (%.1f MB besides base and RL)", arm.mix,
                     network_bytes(self._cache[key]) / 1e6)
        rl = denoiser.rl
        denoiser.rl = self._cache[key]
        try:
            yield
        finally:
            denoiser.rl = rl


def mixed_state_dict(base: dict[str, Any], rl: dict[str, Any], w: float) -> dict[str, Any]:
    """theta_base + w (theta_rl - theta_base) for every floating-point tensor, computed in float32 (float64
    tensors in float64) and cast back to the tensor's dtype; other tensors (integer buffers) must be equal.

    Raises MethodError when the two state dicts do not have the same keys and shapes."""
    _check_same_layout(base, rl)
    return {k: _mixed(k, b, rl[k], w) for k, b in base.items()}


def _check_same_layout(base: dict[str, Any], rl: dict[str, Any]) -> None:
    if base.keys() != rl.keys():
        diff = sorted(set(base) ^ set(rl))
        raise MethodError(f"weight_mix needs two networks of one architecture; their weights differ in names, "
                          f"e.g. {diff[:3]}")
    for k, b in base.items():
        if b.shape != rl[k].shape:
            raise MethodError(f"weight_mix: {k} has shape {tuple(b.shape)} in the base and {tuple(rl[k].shape)} in "
                              "the RL network; the pair is not one architecture")


def _mixed(key: str, b: Any, r: Any, w: float) -> Any:
    import torch

    if not torch.is_floating_point(b):
        if not torch.equal(b, r.to(b.device)):
            raise MethodError(f"weight_mix: the integer buffer {key} differs between base and RL; cannot mix it")
        return b.clone()
    wide = torch.float64 if b.dtype == torch.float64 else torch.float32
    bw, rw = b.to(wide), r.to(device=b.device, dtype=wide)
    return (bw + w * (rw - bw)).to(b.dtype)


def mixed_network(base: Any, rl: Any, w: float) -> Any:
    """A copy of ``rl`` carrying ``mixed_state_dict(base, rl, w)`` (same device and dtype, eval mode), filled
    tensor by tensor: the peak memory is one network copy plus one tensor."""
    import torch

    with torch.no_grad():
        b_state, r_state = base.state_dict(), rl.state_dict()
        _check_same_layout(b_state, r_state)
        net = copy.deepcopy(rl)
        for k, t in net.state_dict().items():  # views of the copy's parameters and buffers
            t.copy_(_mixed(k, b_state[k], r_state[k], w))
    return net.eval()


def network_bytes(net: Any) -> int:
    """Bytes of a network's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))


@contextlib.contextmanager
def lora_scaled(model: Any, adapter: str, w: float) -> Iterator[None]:
    """Within the block, every LoRA layer of ``model`` applies ``adapter`` at w times its loaded strength:
    theta_base + w * scaling * B A. Where the loaded strength is PEFT's own (lora_alpha / r, or / sqrt(r)
    for rsLoRA) this is ``layer.set_scale(adapter, w)``, bit for bit what ``set_adapters(weights=w)`` sets.
    Raises MethodError for adapters whose effect is not linear in the scale (DoRA) or that carry full
    module copies (modules_to_save)."""
    import math

    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.scaling]
    if not layers:
        raise MethodError(f"weight_mix: no LoRA layer carries the adapter {adapter!r}")
    for m in model.modules():
        if isinstance(m, AuxiliaryTrainingWrapper) or bool(getattr(m, "use_dora", {}).get(adapter, False)):
            raise MethodError("weight_mix scales a LoRA's update; this adapter has DoRA layers or modules_to_save "
                              "copies, whose effect is not theta_base + w * delta. Merge it into the network "
                              "(pair.rl_kind: full) to mix weights")
    saved = {m: m.scaling[adapter] for m in layers}
    try:
        for m in layers:
            own = m.lora_alpha[adapter] / (math.sqrt(m.r[adapter]) if m.use_rslora.get(adapter) else m.r[adapter])
            if saved[m] == own:
                m.set_scale(adapter, w)
            else:  # loaded at another strength (e.g. an adapter weight): scale what was loaded
                m.scaling[adapter] = w * saved[m]
        yield
    finally:
        for m, s in saved.items():
            m.scaling[adapter] = s
