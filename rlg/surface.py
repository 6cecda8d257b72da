"""The declared surface of a stock diffusers pipeline: every ``__call__`` keyword, every public pipeline method
and every network method the RLG wrapper can be reached by, each with one of three states.

The oracle (issue 30): at w = 0 RLG equals the stock base pipeline and at w = 1 the stock RL pipeline (the
pipeline with the RL network, or with the RL adapter added to the user's active adapters), under every keyword
and every change declared ``STOCK``. A ``REFUSED`` entry is refused before any image is made, in one line that
names why and what to do. A ``PLACEMENT`` entry changes where or how fast things run, never the images.
``tests/test_oracle.py`` enumerates diffusers' API (``inspect.signature`` of each pipeline class's ``__call__``,
the public methods of the pipelines and networks) and fails on an entry that is not declared here, so a diffusers
release that adds one fails the suite instead of producing silent numbers. docs/guarantees.md renders the tables.

Standard library only: the harness checks ``sampler.extra`` at start-up, before torch is imported.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

STOCK, REFUSED, PLACEMENT = "stock", "refused", "placement"

# Keywords RLG itself sets from the work list and SamplerSettings; given again by another route they would
# replace what the work list says (prompts, paired noise, steps) or break what the sampler reads back.
_OWN = "RLG sets it from the work list"

# keyword -> (state, why (and for a refusal: what to do)). STOCK: passed to the pipeline as is; w = 0 and 1 equal
# the stock pipelines given the same keyword (tests/test_oracle.py, per pipeline class that takes it).
CALL_KEYWORDS: dict[str, tuple[str, str]] = {
    # set by RLG; the same field by sampler.extra is taken as given (equal to stock)
    "num_inference_steps": (REFUSED, f"{_OWN} (the denoiser counts its steps): set sampler.num_inference_steps"),
    "guidance_scale": (STOCK, "CFG is linear, so it commutes with the RLG mix (rlg.denoiser)"),
    "height": (STOCK, "image size"),
    "width": (STOCK, "image size"),
    "negative_prompt": (STOCK, "encoded by the shared text encoders, once for both networks"),
    "negative_prompt_2": (STOCK, "SDXL's second text encoder"),
    "negative_prompt_3": (STOCK, "SD3's T5 encoder"),
    "eta": (STOCK, "DDIM eta; refused where the scheduler's step() takes none (rlg.sampling.eta_ignored)"),
    "prompt": (REFUSED, f"{_OWN}: put the prompts in prompts.path / generate_grid(prompts)"),
    "prompt_2": (STOCK, "SDXL's second text encoder (the same for every prompt of the call)"),
    "prompt_3": (STOCK, "SD3's T5 encoder (the same for every prompt of the call)"),
    "batch_size": (REFUSED, f"{_OWN} (unconditional pipelines: one image per work item): set sampler.batch_size"),
    "generator": (REFUSED, f"{_OWN} (paired noise: one generator per image from (seed, prompt, sample)): set "
                           "grid.seed / generate_grid(seed=)"),
    "latents": (REFUSED, f"{_OWN} (paired noise from each image's generator): set grid.seed"),
    "num_images_per_prompt": (REFUSED, f"{_OWN} (one image per (prompt, sample, scale)): set "
                                       "prompts.samples_per_prompt / generate_grid(samples=)"),
    "output_type": (REFUSED, "RLG stores decoded images (it asks for 'np'); latents for a refiner (the SDXL "
                             "denoising_end recipe) are not stored: remove output_type"),
    "return_dict": (REFUSED, "RLG reads the pipeline's output object: remove return_dict"),
    "callback_on_step_end": (REFUSED, "RLG's own callback checks every step's latents for NaN/inf: remove it"),
    "callback_on_step_end_tensor_inputs": (REFUSED, "belongs to RLG's own step callback: remove it"),
    "kwargs": (REFUSED, "deprecated keywords (callback, callback_steps) are not passed on: remove them"),
    "prompt_embeds": (REFUSED, f"{_OWN} (prompts are encoded per image): give the prompt text instead"),
    "negative_prompt_embeds": (REFUSED, f"{_OWN}: give negative_prompt text (sampler.negative_prompt)"),
    "pooled_prompt_embeds": (REFUSED, f"{_OWN} (prompts are encoded per image): give the prompt text instead"),
    "negative_pooled_prompt_embeds": (REFUSED, f"{_OWN}: give negative_prompt text (sampler.negative_prompt)"),
    # guidance_rescale: Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    # arXiv 2305.08891 Sec. 3.4 eq. 15-16 (diffusers rescale_noise_cfg): x_cfg * (std(x_pos) / std(x_cfg)), a
    # per-sample std ratio, so rescale(mix(.)) != mix(rescale(.)) for w not in {0, 1}: the order is undefined.
    "guidance_rescale": (REFUSED, "rescaling (arXiv 2305.08891 eq. 15-16) divides by a per-image std, so it does "
                                  "not commute with the RLG mix and no order is the official one: remove it "
                                  "(sampler.guidance_rescale=0)"),
    "clip_skip": (STOCK, "text encoder layer, shared by both networks"),
    "cross_attention_kwargs": (STOCK, "passed to both networks ({'scale': s} scales every active LoRA, the RL "
                                      "adapter included, as in the stock pipeline with that adapter)"),
    "joint_attention_kwargs": (STOCK, "passed to both networks (as cross_attention_kwargs)"),
    "timesteps": (STOCK, "a custom schedule; the RLG window is over the steps it runs"),
    "sigmas": (STOCK, "a custom schedule; the RLG window is over the steps it runs"),
    "mu": (STOCK, "the flow schedule's dynamic shift"),
    "strength": (STOCK, "img2img/inpaint: fewer steps run; the RLG window is over the steps that run"),
    "denoising_start": (STOCK, "SDXL: the schedule starts late; the RLG window is over the steps that run"),
    "denoising_end": (STOCK, "SDXL: the schedule stops early; the RLG window is over the steps that run"),
    "image": (STOCK, "img2img/inpaint input, encoded once per image row with that row's generator"),
    "mask_image": (STOCK, "inpaint mask, one copy per image row"),
    "masked_image_latents": (REFUSED, "latents encoded outside the call skip the per-row generators: give "
                                      "image and mask_image instead"),
    "padding_mask_crop": (STOCK, "inpaint crop around the mask"),
    "original_size": (STOCK, "SDXL micro-conditioning"),
    "target_size": (STOCK, "SDXL micro-conditioning"),
    "crops_coords_top_left": (STOCK, "SDXL micro-conditioning"),
    "negative_original_size": (STOCK, "SDXL micro-conditioning"),
    "negative_target_size": (STOCK, "SDXL micro-conditioning"),
    "negative_crops_coords_top_left": (STOCK, "SDXL micro-conditioning"),
    "aesthetic_score": (STOCK, "SDXL refiner micro-conditioning"),
    "negative_aesthetic_score": (STOCK, "SDXL refiner micro-conditioning"),
    "max_sequence_length": (STOCK, "T5 prompt length (SD3, FLUX)"),
    "true_cfg_scale": (STOCK, "FLUX true CFG: a second denoiser call per step, mixed like the first (linear)"),
    "skip_guidance_layers": (STOCK, "SD3 skip-layer guidance: an extra denoiser call per step, mixed like the "
                                    "others; the guidance it adds is linear"),
    "skip_layer_guidance_scale": (STOCK, "SD3 skip-layer guidance"),
    "skip_layer_guidance_start": (STOCK, "SD3 skip-layer guidance"),
    "skip_layer_guidance_stop": (STOCK, "SD3 skip-layer guidance"),
    "use_clipped_model_output": (STOCK, "DDIM step option"),
    "ip_adapter_image": (REFUSED, "IP-Adapters are not supported: their image projection lives in one network"),
    "ip_adapter_image_embeds": (REFUSED, "IP-Adapters are not supported: their image projection lives in one "
                                         "network"),
    "negative_ip_adapter_image": (REFUSED, "IP-Adapters are not supported"),
    "negative_ip_adapter_image_embeds": (REFUSED, "IP-Adapters are not supported"),
}

# keywords that make a call run other steps than num_inference_steps: the RLG window is over the steps that run,
# so it is checked at each call's first step (rlg.denoiser), not against num_inference_steps at start-up
PARTIAL_SCHEDULE = frozenset({"strength", "denoising_start", "denoising_end", "timesteps", "sigmas"})

# keywords under which the Feynman-Kac corrector weights (sampler.correctors=fkc, rlg.fkc) are not derived: a second
# denoiser call per step, or a schedule that does not start from noise (the initial weights would need both models'
# log-densities; docs/fkc.md §1)
FKC_REFUSED = ("true_cfg_scale", "skip_guidance_layers", *sorted(PARTIAL_SCHEDULE))


def fkc_refusal(window: tuple[float, float], extra: Iterable[str]) -> str | None:
    """The one-line refusal of FKC with an RLG window other than (0, 1) or a ``FKC_REFUSED`` keyword, or None."""
    if tuple(window) != (0.0, 1.0):
        return ("sampler.correctors=fkc: the weights are derived for the RLG mix at every step (docs/fkc.md), not "
                "inside a window; remove sampler.window")
    bad = [k for k in FKC_REFUSED if k in set(extra)]
    if bad:
        return (f"sampler.correctors=fkc: no Feynman-Kac weights with sampler.extra.{bad[0]} (a second denoiser call "
                "per step, or a schedule that does not start from noise); remove it")
    return None


_WRAPPED = "on a pipeline wrapped by RLG"
_REWRAP = "make the change before wrapping, or call pair.unwrap(), make it, and wrap again"
_LORA = (f"{_WRAPPED}, diffusers' LoRA methods skip the RLG denoiser (not a ModelMixin), so the change would "
         f"not reach the networks: {_REWRAP}")
_IP = "IP-Adapters are not supported: their image projection and processors would live in the base network only"

# public pipeline methods (enable_*, disable_*, set_*, fuse_*, unfuse_*, load_*, unload_*, delete_*, to,
# from_pipe) -> (state, why). STOCK methods reach both networks through the denoiser (NETWORK_METHODS) or touch
# only shared components; REFUSED ones are replaced on the wrapped pipeline by a one-line refusal
# (rlg.pairs.install), and the same change made before wrapping is caught by rlg.pairs.check_same_changes.
PIPELINE_METHODS: dict[str, tuple[str, str]] = {
    "enable_freeu": (STOCK, "reaches both networks (NETWORK_METHODS)"),
    "disable_freeu": (STOCK, "reaches both networks"),
    "fuse_qkv_projections": (STOCK, "reaches both networks (and the shared VAE)"),
    "unfuse_qkv_projections": (STOCK, "reaches both networks"),
    "enable_attention_slicing": (STOCK, "reaches both networks (set_attention_slice)"),
    "disable_attention_slicing": (STOCK, "reaches both networks"),
    "set_attention_slice": (STOCK, "reaches both networks"),
    "enable_xformers_memory_efficient_attention": (STOCK, "diffusers recurses into every child module: both "
                                                          "networks (needs xformers; not testable on CPU)"),
    "disable_xformers_memory_efficient_attention": (STOCK, "recurses into both networks"),
    "set_use_memory_efficient_attention_xformers": (STOCK, "recurses into both networks"),
    "load_textual_inversion": (STOCK, "changes the shared tokenizer and text encoder only"),
    "unload_textual_inversion": (STOCK, "changes the shared tokenizer and text encoder only"),
    "set_progress_bar_config": (PLACEMENT, "progress display"),
    "enable_model_cpu_offload": (PLACEMENT, "moves whole components, the RLG denoiser with both networks"),
    "enable_sequential_cpu_offload": (PLACEMENT, "moves layers of every component, both networks"),
    "enable_group_offload": (PLACEMENT, "moves groups of layers of every component"),
    "to": (PLACEMENT, "moves every component, the RLG denoiser with both networks"),
    "load_config": (PLACEMENT, "reads a config file; changes nothing"),
    "load_lora_weights": (REFUSED, _LORA),
    "load_lora_into_unet": (REFUSED, _LORA),
    "load_lora_into_transformer": (REFUSED, _LORA),
    "load_lora_into_text_encoder": (REFUSED, _LORA),
    "unload_lora_weights": (REFUSED, _LORA),
    "fuse_lora": (REFUSED, _LORA),
    "unfuse_lora": (REFUSED, _LORA),
    "set_adapters": (REFUSED, _LORA),
    "enable_lora": (REFUSED, _LORA),
    "disable_lora": (REFUSED, _LORA),
    "delete_adapters": (REFUSED, _LORA),
    "set_lora_device": (REFUSED, _LORA),
    "enable_lora_hotswap": (REFUSED, _LORA),
    "load_ip_adapter": (REFUSED, _IP),
    "unload_ip_adapter": (REFUSED, _IP),
    "set_ip_adapter_scale": (REFUSED, _IP),
    "from_pipe": (REFUSED, f"{_WRAPPED}, the new pipeline would share the RLG denoiser without its sampler: "
                           "call from_pipe on the unwrapped pipeline (pair.unwrap()) and wrap the new one"),
}
PIPELINE_METHOD_PATTERN = re.compile(r"^(enable|disable|set|fuse|unfuse|load|unload|delete)_|^(to|from_pipe)$")

BOTH, BOTH_CONTEXT, BASE = "both", "both_context", "base"
_NET_LORA = (f"network LoRA methods {_WRAPPED} would change the adapters the RLG denoiser switches between "
             f"(the user's adapters form the base, plus the RL adapter for RL): {_REWRAP}")
_SAVE = "would save the base network only: save pair.denoiser.base and pair.denoiser.rl explicitly"

# callables of the base network reached through RLGDenoiser.__getattr__ (pipelines call them on their
# ``unet`` / ``transformer``) -> how: BOTH (called on the base and on a full pair's RL network, in that order;
# the base's result is returned), BOTH_CONTEXT (a context manager entered on both), BASE (a read or a class
# helper: the base's answer), or (REFUSED, why). An undeclared one raises at access (rlg.denoiser).
NETWORK_METHODS: dict[str, Any] = {
    **{n: BOTH for n in (
        "enable_freeu", "disable_freeu", "set_attn_processor", "set_default_attn_processor", "set_attention_slice",
        "fuse_qkv_projections", "unfuse_qkv_projections", "enable_forward_chunking", "disable_forward_chunking",
        "set_attention_backend", "reset_attention_backend", "enable_xformers_memory_efficient_attention",
        "disable_xformers_memory_efficient_attention", "set_use_memory_efficient_attention_xformers",
        "enable_npu_flash_attention", "disable_npu_flash_attention", "set_use_npu_flash_attention",
        "enable_xla_flash_attention", "disable_xla_flash_attention", "set_use_xla_flash_attention",
        "enable_gradient_checkpointing", "disable_gradient_checkpointing", "_set_gradient_checkpointing",
        "enable_layerwise_casting", "enable_cache", "disable_cache", "_reset_stateful_cache",
        "enable_group_offload", "compile_repeated_blocks")},
    "cache_context": BOTH_CONTEXT,
    **{n: BASE for n in (
        "active_adapters", "get_memory_footprint", "num_parameters", "get_time_embed", "get_class_embed",
        "get_aug_embed", "process_encoder_hidden_states", "to_json_string", "to_json_file", "save_config",
        "get_config_dict", "extract_init_dict", "from_config", "from_pretrained", "from_single_file", "load_config",
        "register_for_auto_class", "_get_signature_keys", "_get_init_keys", "_get_no_split_modules", "_check_config",
        "_dict_from_json_file", "_optionally_disable_offloading", "_resolve_parallel_config", "_fix_state_dict_keys_on_load",
        "_set_default_torch_dtype", "_load_pretrained_model", "_get_custom_diffusion_state_dict")},
    **{n: (REFUSED, _NET_LORA) for n in (
        "load_lora_adapter", "set_adapters", "set_adapter", "add_adapter", "delete_adapters", "enable_adapters",
        "disable_adapters", "enable_lora", "disable_lora", "fuse_lora", "unfuse_lora", "unload_lora",
        "_fuse_lora_apply", "_unfuse_lora_apply", "enable_lora_hotswap", "load_attn_procs", "_process_custom_diffusion")},
    **{n: (REFUSED, _IP) for n in (
        "_load_ip_adapter_weights", "_load_ip_adapter_loras", "_convert_ip_adapter_attn_to_diffusers",
        "_convert_ip_adapter_image_proj_to_diffusers")},
    **{n: (REFUSED, _SAVE) for n in ("save_pretrained", "push_to_hub", "save_lora_adapter", "save_attn_procs",
                                     "_upload_folder")},
    **{n: (REFUSED, "changes the network's architecture in place: make the change before wrapping, on both networks")
       for n in ("register_to_config", "dequantize", "enable_parallelism", "_set_add_embedding", "_set_class_embedding",
                 "_set_encoder_hid_proj", "_set_pos_net_if_use_gligen", "_set_time_proj")},
}


def refusal(route: str, key: str, why: str) -> str:
    """The one-line refusal of ``key`` given by ``route`` (e.g. ``sampler.extra``)."""
    return f"{route}.{key} is refused: {why}"


def check_call_keywords(keys: Iterable[str], route: str = "sampler.extra", *, accepted: Iterable[str] | None = None,
                        pipeline: str = "the pipeline") -> None:
    """Raise ValueError (one line) for the first keyword that is refused, undeclared, or (when ``accepted``,
    the pipeline's ``__call__`` parameters, is given) not taken by the pipeline.

    Every route into the pipeline's ``__call__`` (``sampler.extra``, ``generate_grid(**kwargs)``,
    ``SamplerSettings(extra=...)``) calls this, at start-up by name and again per pipeline class in
    ``rlg.sampling.RLGSampler``."""
    accepted = None if accepted is None else set(accepted) - {"self"}
    unknown = sorted(k for k in keys if accepted is not None and k not in accepted)
    if unknown:
        raise ValueError(f"{route} has {unknown}, which {pipeline} does not accept; remove them (its arguments: "
                         f"{', '.join(sorted(accepted - {'kwargs'}))})")
    for key in sorted(keys):
        state, why = CALL_KEYWORDS.get(key, (None, ""))
        if state is None:
            raise ValueError(f"{route}.{key} is not declared in rlg.surface.CALL_KEYWORDS, so RLG cannot say whether "
                             "w = 0 and 1 still equal the stock pipelines; remove it (or declare and test it)")
        if state == REFUSED:
            raise ValueError(refusal(route, key, why))


def table_markdown() -> str:
    """The three tables as Markdown (docs/guarantees.md includes this text)."""
    out = []
    for title, table in (("Pipeline `__call__` keywords", CALL_KEYWORDS), ("Pipeline methods", PIPELINE_METHODS)):
        out += [f"### {title}", "", "| name | state | why / what to do |", "|---|---|---|"]
        out += [f"| `{k}` | {s} | {w} |" for k, (s, w) in sorted(table.items())]
        out.append("")
    out += ["### Network methods reached through the RLG denoiser", "", "| name | how |", "|---|---|"]
    for k, v in sorted(NETWORK_METHODS.items()):
        out.append(f"| `{k}` | {v if isinstance(v, str) else 'refused: ' + v[1]} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m rlg.surface: the tables for docs/guarantees.md
    print(table_markdown(), end="")
