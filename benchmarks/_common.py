"""What the benchmarks share: tiny pairs, the harness's grid loop (rlg.grid.run_grid), the hand-written
floor and official loops, the minimum row count, clocks and the header line.

Only public API: rlg.pairs / rlg.grid / rlg.sampling / rlg.denoiser, the harness's config schema for its
defaults, diffusers pipelines and PEFT's LoraLayer (whose ``forward`` takes ``adapter_names``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from dataclasses import dataclass

SEED, CFG, SIZE = 0, 4.5, 32
PAPER_SCALES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # the official 7-scale grid
SETUPS = [("sd", "full"), ("sd", "peft_lora"), ("sd3", "full"), ("sd3", "peft_lora")]


def prompts(n: int) -> list[str]:
    return [f"a photo of object number {i} on a table, studio light" for i in range(n)]


def scales(n: int) -> list[float]:
    """``n`` scales evenly spaced over [0, 3] (the paper's range); one scale: 1.5."""
    if n == 1:
        return [1.5]
    return [round(3.0 * i / (n - 1), 6) for i in range(n)]


def minimum_rows(grid: list[float], steps: int, n_prompts: int) -> int:
    """Network rows a grid needs (one row = one sample through one model), 2 CFG rows each:
    the first step's input is shared by every scale of a (prompt, sample), so it runs once per model
    that any scale needs; after it, w = 0 needs only the base model, w = 1 only the RL model, every
    other scale both."""
    n_base = sum(w != 1.0 for w in grid)
    n_rl = sum(w != 0.0 for w in grid)
    first = (n_base > 0) + (n_rl > 0)
    return n_prompts * 2 * (first + (steps - 1) * (n_base + n_rl))


def official_rows(grid: list[float], steps: int, n_prompts: int) -> int:
    """The official approach: every scale its own generation, base and RL each on 2 CFG rows per step."""
    return n_prompts * len(grid) * steps * 4


def harness_defaults() -> tuple[object, int]:
    """(sampler.micro_batch, sampler.batch_size) as the harness ships them (its config schema)."""
    from rlg.harness.config import SamplerConf

    conf = SamplerConf(name="defaults")
    return conf.micro_batch, conf.batch_size


def load(family: str, kind: str, device: str = "cpu", dtype: str = "float32"):
    """A tiny offline pair (rlg.tiny_pairs) on ``device``."""
    import torch

    from rlg.pairs import load_pair, tiny_spec

    spec = tiny_spec(family, kind)
    spec.dtype = dtype
    pair = load_pair(spec)
    pair.pipe.to(torch.device(device))
    return pair


def run_harness(pair, texts: list[str], grid: list[float], steps: int, micro_batch, batch_size: int,
                size: int = SIZE) -> dict:
    """Generate the grid with the harness's own loop (rlg.grid.run_grid: calls packed as the harness packs them).
    Returns the denoiser's row counts (rows = base + RL rows; padded rows counted apart)."""
    from rlg.grid import Grid, run_grid
    from rlg.sampling import SamplerSettings

    settings = SamplerSettings(num_inference_steps=steps, guidance_scale=CFG, height=size, width=size,
                               micro_batch=micro_batch)
    pair.denoiser.stats.reset()
    images = [res for call in run_grid(pair, Grid(tuple(texts), tuple(grid), seed=SEED, settings=settings,
                                                  batch_size=batch_size)) for _, res in call]
    st = pair.denoiser.stats
    return {"rows": st.base_rows + st.rl_rows, "padded_rows": st.padded_rows, "forwards": st.forwards,
            "images": images}


@contextlib.contextmanager
def adapter_per_row(net, tags: list[str] | None):
    """One forward of a PEFT-LoRA network with an adapter choice per row (``"__base__"``: none), through
    the ``adapter_names`` argument of PEFT's LoraLayer.forward."""
    if tags is None:
        yield
        return
    from peft.tuners.lora import LoraLayer

    def hook(module, args, kwargs):
        kwargs["adapter_names"] = tags
        return args, kwargs

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in net.modules() if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Loop:
    """What the hand-written loops share: prompt encoding, noise, one network call, decoding."""

    def __init__(self, pair, steps: int, device: str, size: int = SIZE):
        import torch

        self.pair, self.steps, self.device, self.size = pair, steps, torch.device(device), size
        self.pipe = pair.pipe
        self.sd3 = pair.denoiser_name == "transformer"
        den = pair.denoiser
        self.base_net, self.rl_net = den.base, (den.rl if den.rl is not None else den.base)
        self.lora = den.is_lora_pair
        self.rl_tag = den.rl_adapter
        self.rows = 0

    def encode(self, prompt: str):
        if self.sd3:
            return self.pipe.encode_prompt(prompt, prompt, prompt, device=self.device, do_classifier_free_guidance=True,
                                           negative_prompt="", negative_prompt_2="", negative_prompt_3="")
        pe, npe = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt="")
        return pe, npe, None, None

    def noise(self, p: int):
        import torch

        from rlg.sampling import noise_seed

        g = torch.Generator().manual_seed(noise_seed(SEED, p, 0))
        n = self.size // self.pipe.vae_scale_factor
        return torch.randn((1, self.base_net.config.in_channels, n, n), generator=g).to(self.device,
                                                                                          self.base_net.dtype)

    def call(self, model, x, t, emb, pooled, tags=None):
        """One forward over the rows of x (CFG rows included); tags choose the LoRA adapter per row."""
        self.rows += x.shape[0]
        with adapter_per_row(model, tags if self.lora else None):
            if self.sd3:
                return model(hidden_states=x, timestep=t.expand(x.shape[0]).to(self.device),
                             encoder_hidden_states=emb, pooled_projections=pooled, return_dict=False)[0]
            return model(x, t.to(self.device), encoder_hidden_states=emb, return_dict=False)[0]

    def scheduler(self):
        import copy

        s = copy.deepcopy(self.pipe.scheduler)
        s.set_timesteps(self.steps, device=self.device)
        return s

    def decode(self, x):
        vae = self.pipe.vae
        shift = (vae.config.shift_factor or 0.0) if self.sd3 else 0.0
        img = vae.decode((x / vae.config.scaling_factor + shift).to(vae.dtype), return_dict=False)[0]
        return ((img / 2 + 0.5).clamp(0, 1) * 255).round().byte().cpu()


def run_floor(pair, texts: list[str], grid: list[float], steps: int, device: str, size: int = SIZE) -> dict:
    """Only the network calls the grid needs, one prompt at a time: text encoded once per prompt, the
    shared first step once per model, w=0 / w=1 one model each, one forward per model and step (base
    and RL rows in one forward for a LoRA pair), no micro-batching."""
    import torch

    loop = Loop(pair, steps, device, size)
    w = torch.tensor(grid, device=loop.device).view(-1, 1, 1, 1)
    need_b, need_r = w.flatten() != 1, w.flatten() != 0
    idx_b, idx_r = torch.nonzero(need_b).flatten(), torch.nonzero(need_r).flatten()
    n = len(grid)
    with torch.no_grad():
        for p, prompt in enumerate(texts):
            pe, npe, pp, npp = loop.encode(prompt)
            sched = loop.scheduler()
            x = loop.noise(p).repeat(n, 1, 1, 1)
            for i, t in enumerate(sched.timesteps):
                shared = i == 0  # every scale has the same input: one row per model that any scale needs
                xb = x[:1] if shared and need_b.any() else x[need_b]
                xr = x[:1] if shared and need_r.any() else x[need_r]

                def cfg_rows(xs):
                    k = xs.shape[0]
                    return (torch.cat([xs, xs]), torch.cat([npe.expand(k, -1, -1), pe.expand(k, -1, -1)]),
                            None if pp is None else torch.cat([npp.expand(k, -1), pp.expand(k, -1)]))

                (ib, eb, qb), (ir, er, qr) = cfg_rows(xb), cfg_rows(xr)
                nb, nr = ib.shape[0], ir.shape[0]
                if loop.lora:  # one forward, adapter chosen per row
                    out = loop.call(loop.base_net, torch.cat([ib, ir]), t, torch.cat([eb, er]),
                                    None if qb is None else torch.cat([qb, qr]),
                                    ["__base__"] * nb + [loop.rl_tag] * nr)
                    ob, orl = out[:nb], out[nb:]
                else:
                    ob = loop.call(loop.base_net, ib, t, eb, qb) if nb else ib
                    orl = loop.call(loop.rl_net, ir, t, er, qr) if nr else ir
                full_b = full_r = torch.zeros_like(x)
                if nb:
                    ub, cb = ob.chunk(2)
                    pb = ub + CFG * (cb - ub)
                    full_b = pb.expand(n, -1, -1, -1) if shared else full_b.index_copy(0, idx_b, pb)
                if nr:
                    ur, cr = orl.chunk(2)
                    pr = ur + CFG * (cr - ur)
                    full_r = pr.expand(n, -1, -1, -1) if shared else full_r.index_copy(0, idx_r, pr)
                x = sched.step(full_b + w * (full_r - full_b), t, x, return_dict=False)[0]
            for k in range(n):  # the VAE runs row by row in the harness too
                loop.decode(x[k:k + 1])
    return {"rows": loop.rows, "padded_rows": 0}


def run_official(pair, texts: list[str], grid: list[float], steps: int, device: str, size: int = SIZE) -> dict:
    """The official RLG approach: each scale its own generation, 4 network evaluations per step (base
    and RL as separate 2-row CFG forwards), as in the official SD3 script."""
    import torch

    loop = Loop(pair, steps, device, size)
    with torch.no_grad():
        for p, prompt in enumerate(texts):
            for w in grid:
                pe, npe, pp, npp = loop.encode(prompt)
                sched = loop.scheduler()
                x = loop.noise(p)
                emb = torch.cat([npe, pe])
                pooled = None if pp is None else torch.cat([npp, pp])
                for t in sched.timesteps:
                    xi = torch.cat([x, x])
                    ub, cb = loop.call(loop.base_net, xi, t, emb, pooled, ["__base__"] * 2).chunk(2)
                    ur, cr = loop.call(loop.rl_net, xi, t, emb, pooled, [loop.rl_tag] * 2).chunk(2)
                    pb, pr = ub + CFG * (cb - ub), ur + CFG * (cr - ur)
                    x = sched.step(pb + w * (pr - pb), t, x, return_dict=False)[0]
                loop.decode(x)
    return {"rows": loop.rows, "padded_rows": 0}


@dataclass
class Clock:
    """Process CPU seconds on a CPU (robust to other jobs sharing the cores, with one thread), wall
    seconds after a device sync on a GPU."""

    device: str
    kind: str = "auto"

    def __post_init__(self):
        if self.kind == "auto":
            self.kind = "wall" if self.device.startswith("cuda") else "cpu"

    def now(self) -> float:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.process_time() if self.kind == "cpu" else time.perf_counter()


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def header(name: str, device: str, threads: int, clock: str) -> str:
    import diffusers
    import peft
    import torch

    return (f"# {name}  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  "
            f"torch {torch.__version__}  diffusers {diffusers.__version__}  peft {peft.__version__}\n"
            f"# machine: {platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, device={device}, "
            f"threads={threads}, clock={clock}")
