"""The RLG sampling core on tiny real pipelines of every family and every checkpoint kind.

References are independent of rlg.denoiser: the stock diffusers pipeline with the base or the RL
network, and the official order written out below (CFG inside each model, then the mix).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import diffusers
from diffusers.models.unets.unet_2d import UNet2DOutput
from rlg.tiny_pairs import LORA_ALPHA, LORA_RANK, build_pair
from rlg.pairs import Checkpoint, PairError, PairSpec, load_pair, tiny_spec
from rlg.sampling import RLGSampler, SamplerSettings, WorkItem, noise_seed

STEPS, CFG, SIZE = 3, 4.5, 32
PROMPT, SEED = "a photo of a red cube on a table", 7
NO_CFG = {"flux", "ddim"}  # FLUX.1-dev embeds guidance; unconditional pipelines have none


def settings(family: str) -> SamplerSettings:
    s = SamplerSettings(num_inference_steps=STEPS, guidance_scale=CFG)
    if family != "ddim":
        s.height = s.width = SIZE
    if family.endswith("inpaint"):
        s.extra = {"image": Image.new("RGB", (SIZE, SIZE), (150, 40, 40)),
                   "mask_image": Image.fromarray(np.tri(SIZE, dtype=np.uint8) * 255)}
    return s


def stock_image(pipe, family: str, scale_note: str = "") -> np.ndarray:
    """Run a stock pipeline for (PROMPT, SEED, prompt 0, sample 0) the way a user would."""
    s = settings(family)
    kw = dict(num_inference_steps=STEPS, output_type="np",
              generator=[torch.Generator().manual_seed(noise_seed(SEED, 0, 0))], **s.extra)
    if family == "ddim":
        kw["batch_size"] = 1
    else:
        kw.update(prompt=[PROMPT], negative_prompt=[""], guidance_scale=CFG, height=SIZE, width=SIZE)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        img = pipe(**kw).images[0]
    return (np.asarray(img).clip(0, 1) * 255).round().astype(np.uint8)


def rlg_image(pair, family: str, scale: float) -> np.ndarray:
    return RLGSampler(pair, settings(family)).generate([WorkItem(0, PROMPT, 0, SEED, scale)])[0].image


class OfficialOrder(torch.nn.Module):
    """The official RLG step written out: CFG inside each model, then the mix. It returns the
    final prediction in both CFG halves so the pipeline's own CFG leaves it unchanged."""

    def __init__(self, base, rl, scale, cfg: float | None):
        super().__init__()
        self.base, self.rl, self.scale, self.cfg = base, rl, scale, cfg

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def device(self):
        return self.base.device

    def forward(self, *args, **kwargs):
        as_tuple = kwargs.get("return_dict", True) is False
        kwargs["return_dict"] = False
        b, r = self.base(*args, **kwargs)[0], self.rl(*args, **kwargs)[0]
        if self.cfg is None:
            out = b + self.scale * (r - b)
        else:
            (bu, bc), (ru, rc) = b.chunk(2), r.chunk(2)
            pb, pr = bu + self.cfg * (bc - bu), ru + self.cfg * (rc - ru)
            p = pb + self.scale * (pr - pb)
            out = torch.cat([p, p])
        return (out,) if as_tuple else UNet2DOutput(sample=out)


def fresh_base(spec: PairSpec):
    pipe = diffusers.DiffusionPipeline.from_pretrained(spec.base.id)
    return pipe, ("unet" if hasattr(pipe, "unet") else "transformer")


def reference_rl(spec: PairSpec, pipe, name: str):
    """The RL network built the library's own way, independent of rlg.pairs."""
    net = getattr(pipe, name)
    if spec.rl_kind == "full":
        return type(net).from_pretrained(spec.rl.id, subfolder=name).eval()
    if spec.rl_kind == "peft_lora":
        from peft import PeftModel

        import copy
        return PeftModel.from_pretrained(copy.deepcopy(net), spec.rl.id).eval()
    import copy
    other, _ = fresh_base(spec)
    other.load_lora_weights(spec.rl.id, weight_name=spec.rl.weight_name)
    return getattr(other, name).eval()


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


CASES = [(f, k) for f in ("sd", "sdxl", "sd3", "flux", "sd_inpaint", "sdxl_inpaint") for k in
         ("full", "diffusers_lora", "peft_lora")] + [("ddim", "full")]


@pytest.mark.parametrize("family,kind", CASES)
def test_scales_reproduce_stock_pipelines_and_official_order(family, kind, fixture_root):
    spec = tiny_spec(family, kind, root=fixture_root)
    pair = load_pair(spec)
    img0, img1, img17 = (rlg_image(pair, family, w) for w in (0.0, 1.0, 1.7))

    base_pipe, name = fresh_base(spec)
    base_net = getattr(base_pipe, name)
    # w = 0 is the stock base pipeline: same computation, so equal to the last bit
    assert max_diff(img0, stock_image(base_pipe, family)) == 0

    rl_net = reference_rl(spec, base_pipe, name)
    setattr(base_pipe, name, rl_net)
    stock_rl = stock_image(base_pipe, family)
    # w = 1 is the stock pipeline with the RL network; LoRA layers in a mixed batch add the
    # adapter term in another order than a pure-adapter forward: allow one uint8 level
    assert max_diff(img1, stock_rl) <= (0 if kind == "full" else 1)
    assert max_diff(img0, stock_rl) > 0, "base and RL images are identical: the RL checkpoint did nothing"

    setattr(base_pipe, name, OfficialOrder(base_net, rl_net, 1.7, None if family in NO_CFG else CFG))
    official = stock_image(base_pipe, family)
    # mixing before vs after CFG is equal in exact arithmetic; float rounding moves at most one level
    assert max_diff(img17, official) <= 1
    assert max_diff(img17, img1) > 0


def _merged_denoiser(spec: PairSpec, keys_prefix: str, scaling: float):
    """The RL denoiser by hand: W + (alpha / r) * B @ A for every LoRA pair of the file."""
    pipe, name = fresh_base(spec)
    net = getattr(pipe, name)
    path = f"{spec.rl.id}/{spec.rl.weight_name or 'adapter_model.safetensors'}"
    sd = load_file(path)
    modules = dict(net.named_modules())
    merged = 0
    with torch.no_grad():
        for k, a in sd.items():
            if ".lora_A." not in k:
                continue
            b = sd[k.replace(".lora_A.", ".lora_B.")]
            mod = modules[k[len(keys_prefix):].split(".lora_A.")[0]]
            mod.weight += scaling * (b @ a)
            merged += 1
    assert merged > 0
    return net.eval()


@pytest.mark.parametrize("family,kind", [("sd", "peft_lora"), ("sd", "diffusers_lora"), ("sd3", "peft_lora")])
def test_lora_loaded_at_alpha_over_r(family, kind, fixture_root):
    spec = tiny_spec(family, kind, root=fixture_root)
    if kind == "peft_lora":
        cfg = json.loads((build_pair(family, fixture_root) / "rl-peft" / "adapter_config.json").read_text())
        scaling, prefix = cfg["lora_alpha"] / cfg["r"], "base_model.model."
    else:
        scaling, prefix = LORA_ALPHA / LORA_RANK, ("unet." if family == "sd" else "transformer.")
    assert scaling == 2.0  # the fixtures use lora_alpha != r on purpose
    merged = _merged_denoiser(spec, prefix, scaling)
    pair = load_pair(spec)
    torch.manual_seed(0)
    if family == "sd":
        inputs = dict(sample=torch.randn(3, 4, 16, 16), timestep=torch.tensor(500),
                      encoder_hidden_states=torch.randn(3, 77, 32))
    else:
        inputs = dict(hidden_states=torch.randn(3, 4, 16, 16), timestep=torch.full((3,), 500.0),
                      encoder_hidden_states=torch.randn(3, 77, 64), pooled_projections=torch.randn(3, 64))
    with torch.no_grad():
        pair.denoiser.begin([1.0, 1.0, 0.0], STEPS)
        out = pair.denoiser(**inputs, return_dict=False)[0]
        ref_rl = merged(**inputs, return_dict=False)[0]
    torch.testing.assert_close(out[:2], ref_rl[:2], atol=1e-4, rtol=1e-4)
    assert (out[2] - ref_rl[2]).abs().max() > 1e-3  # row 2 is the base model, not the RL one


@pytest.mark.parametrize("kind", ["full", "peft_lora"])
def test_one_fused_forward_equals_separate_forwards(kind, fixture_root):
    spec = tiny_spec("sd", kind, root=fixture_root)
    pair = load_pair(spec)
    pipe, name = fresh_base(spec)
    base_net, rl_net = getattr(pipe, name).eval(), reference_rl(spec, pipe, name)
    torch.manual_seed(1)
    x, e = torch.randn(4, 4, 16, 16), torch.randn(4, 77, 32)
    scales = [0.0, 0.5, 1.0, 2.5]
    with torch.no_grad():
        pair.denoiser.begin(scales, STEPS)
        pair.denoiser.stats.reset()
        out = pair.denoiser(x, torch.tensor(400), encoder_hidden_states=e).sample
        b = base_net(x, torch.tensor(400), encoder_hidden_states=e).sample
        r = rl_net(x, torch.tensor(400), encoder_hidden_states=e).sample
    w = torch.tensor(scales).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, b + w * (r - b), atol=2e-5, rtol=1e-5)
    # scales 0 and 1 need one model each: 3 base rows (w != 1), 3 RL rows (w != 0)
    assert (pair.denoiser.stats.base_rows, pair.denoiser.stats.rl_rows) == (3, 3)
    assert pair.denoiser.stats.forwards == (1 if kind == "peft_lora" else 2)


@pytest.mark.parametrize("family,kind", [("sd", "peft_lora"), ("sd3", "full"), ("sdxl", "diffusers_lora")])
def test_image_does_not_depend_on_batch(family, kind, fixture_root):
    pair = load_pair(tiny_spec(family, kind, root=fixture_root), micro_batch=4)
    sampler = RLGSampler(pair, settings(family))
    target = WorkItem(0, PROMPT, 0, SEED, 1.5)
    alone = sampler.generate([target])[0].image
    others = [WorkItem(i, f"prompt number {i}", i % 2, SEED + i, 0.5 * i) for i in range(1, 8)]
    in_batch = sampler.generate(others[:3] + [target] + others[3:])[3].image
    grid = [WorkItem(0, PROMPT, 0, SEED, w) for w in (0, 0.5, 1, 1.5, 2, 2.5, 3)]
    in_grid = sampler.generate(grid)[3].image
    assert np.array_equal(alone, in_batch) and np.array_equal(alone, in_grid)
    # and every scale of the grid started from the same noise: w=0 is the base image of this seed
    assert np.array_equal(sampler.generate([WorkItem(0, PROMPT, 0, SEED, 0.0)])[0].image,
                          sampler.generate(grid)[0].image)


def test_noise_depends_only_on_seed_prompt_and_sample():
    assert noise_seed(1, 2, 3) == noise_seed(1, 2, 3)
    assert len({noise_seed(1, 2, 3), noise_seed(1, 3, 2), noise_seed(2, 2, 3), noise_seed(1, 2, 4)}) == 4


# --- bad input -------------------------------------------------------------------------------
def test_mismatched_architectures_name_the_config_field(fixture_root):
    sd, sdxl = build_pair("sd", fixture_root), build_pair("sdxl", fixture_root)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")), Checkpoint(str(sdxl / "rl-full")), offline=True)
    with pytest.raises(PairError, match="different config.*cross_attention_dim"):
        load_pair(spec)
    flux = build_pair("flux", fixture_root)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")), Checkpoint(str(flux / "rl-full"), subfolder="transformer"),
                    offline=True)
    with pytest.raises(PairError, match="same architecture"):
        load_pair(spec)


def test_lora_for_another_architecture(fixture_root):
    sd, sd3 = build_pair("sd", fixture_root), build_pair("sd3", fixture_root)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")), Checkpoint(str(sd3 / "rl-peft")), rl_kind="peft_lora",
                    offline=True)
    with pytest.raises(PairError, match="matches no module"):
        load_pair(spec)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")),
                    Checkpoint(str(sd3 / "rl-lora"), weight_name="pytorch_lora_weights.safetensors"),
                    rl_kind="diffusers_lora", offline=True)
    with pytest.raises(PairError, match="no weights for the unet"):
        load_pair(spec)


def test_peft_adapter_given_as_diffusers_lora_is_refused(fixture_root):
    sd = build_pair("sd", fixture_root)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")),
                    Checkpoint(str(sd / "rl-peft"), weight_name="adapter_model.safetensors"),
                    rl_kind="diffusers_lora", offline=True)
    with pytest.raises(PairError, match="rl_kind: peft_lora"):
        load_pair(spec)


def test_adapter_that_changes_nothing(fixture_root, tmp_path):
    import shutil

    from safetensors.torch import save_file

    src = build_pair("sd", fixture_root) / "rl-peft"
    dst = tmp_path / "zero-adapter"
    shutil.copytree(src, dst)
    sd = load_file(dst / "adapter_model.safetensors")
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in sd.items()}, dst / "adapter_model.safetensors")
    spec = PairSpec("bad", Checkpoint(str(build_pair("sd", fixture_root) / "base")), Checkpoint(str(dst)),
                    rl_kind="peft_lora", offline=True)
    with pytest.raises(PairError, match="changes nothing"):
        load_pair(spec)


def test_missing_files_and_offline_hub_ids_name_the_fix(fixture_root, tmp_path):
    spec = PairSpec("bad", Checkpoint(str(tmp_path / "nowhere")), Checkpoint(str(tmp_path / "nowhere2")), offline=True)
    with pytest.raises(PairError, match="Fix: the local path"):
        load_pair(spec)
    spec = PairSpec("bad", Checkpoint("stable-diffusion-v1-5/stable-diffusion-v1-5", revision="abc123"),
                    Checkpoint("mhdang/dpo-sd1.5-text2image-v1"), offline=True)
    with pytest.raises(PairError, match=r"hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --revision abc123"):
        load_pair(spec)
    sd = build_pair("sd", fixture_root)
    spec = PairSpec("bad", Checkpoint(str(sd / "base")), Checkpoint(str(tmp_path)), rl_kind="peft_lora", offline=True)
    with pytest.raises(PairError, match="adapter_config.json"):
        load_pair(spec)


def test_pickle_weights_need_opt_in(fixture_root, tmp_path):
    import shutil

    sd = build_pair("sd", fixture_root)
    dst = tmp_path / "pickled"
    shutil.copytree(sd / "rl-full", dst)
    st = dst / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(st), dst / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    spec = PairSpec("ddpo-like", Checkpoint(str(sd / "base")), Checkpoint(str(dst)), offline=True)
    with pytest.raises(PairError, match="allow_pickle=true"):
        load_pair(spec)
    spec.allow_pickle = True
    pair = load_pair(spec)
    assert isinstance(pair.denoiser.rl, diffusers.UNet2DConditionModel)


def test_guidance_rescale_is_refused(fixture_root):
    pair = load_pair(tiny_spec("sd", "full", root=fixture_root))
    with pytest.raises(ValueError, match="guidance_rescale"):
        RLGSampler(pair, SamplerSettings(guidance_rescale=0.7))


def test_out_of_memory_splits_the_call_without_changing_images(fixture_root, monkeypatch):
    pair = load_pair(tiny_spec("sd", "peft_lora", root=fixture_root), micro_batch=2)
    sampler = RLGSampler(pair, settings("sd"))
    grid = [WorkItem(0, PROMPT, 0, SEED, w) for w in (0, 0.5, 1, 1.5, 2, 2.5, 3)]
    expected = [g.image for g in sampler.generate(grid)]

    calls, real_call = [], RLGSampler._generate

    def small_gpu(self, items):  # fault injection: a pipeline call with more than 6 images runs out of memory
        calls.append(len(items))
        if len(items) > 6:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_call(self, items)

    monkeypatch.setattr(RLGSampler, "_generate", small_gpu)
    got = [g.image for g in sampler.generate(grid)]
    assert calls == [7, 3, 4]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))

    def no_gpu(self, items):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(RLGSampler, "_generate", no_gpu)
    with pytest.raises(RuntimeError, match="single image: lower sampler.micro_batch"):
        sampler.generate(grid)  # halves down to one image, then gives the fix
