"""rlg.registry.Registry: the one shape of the named choices (evaluators, schedulers, rl kinds, methods)."""

from __future__ import annotations

import sys

import pytest

from rlg.registry import Registry


class Refused(ValueError):
    pass


def test_names_in_order_lazy_entries_imported_on_first_get_and_a_miss_names_the_choices():
    reg = Registry("colour", {"red": "colorsys:rgb_to_hsv", "blue": len}, error=Refused)

    @reg.register("green")
    def green():
        return "g"

    assert reg.names() == ["red", "blue", "green"] and list(reg) == reg.names() and len(reg) == 3
    assert "red" in reg and "pink" not in reg
    assert reg["red"] == "colorsys:rgb_to_hsv"  # the entry as registered: a path, nothing imported
    import colorsys

    assert reg.get("red") is colorsys.rgb_to_hsv and reg.get("blue") is len and reg.get("green") is green
    assert reg["red"] == "colorsys:rgb_to_hsv"  # get does not replace the registered entry
    with pytest.raises(Refused, match=r"^unknown colour 'pink'; use one of red, blue, green$"):
        reg.get("pink")
    with pytest.raises(KeyError, match="unknown colour 'pink'"):
        reg.get("pink", error=KeyError)
    with pytest.raises(ValueError, match="colour 'red' is registered already"):
        reg.register("red", len)


def test_a_lazy_entry_is_not_imported_until_get():
    sys.modules.pop("json.tool", None)
    reg = Registry("tool", {"json": "json.tool:main"})
    assert reg.names() == ["json"] and "json.tool" not in sys.modules
    assert reg.get("json").__module__ == "json.tool"


def test_the_projects_registries_share_the_shape_and_keep_their_errors():
    from rlg.choices import RL_KINDS, SCHEDULERS
    from rlg.evaluators.base import REGISTRY, UnknownEvaluatorError, evaluator_class
    from rlg.methods import METHODS, MethodError, get_method

    assert all(isinstance(r, Registry) for r in (REGISTRY, SCHEDULERS, RL_KINDS, METHODS))
    assert SCHEDULERS.names() == ["default", "ddim", "euler_ode", "flow_grpo_sde"]
    assert RL_KINDS.names() == ["full", "diffusers_lora", "peft_lora"]
    assert REGISTRY["jpeg"] == "rlg.evaluators.jpeg:JpegCompressibility"
    with pytest.raises(UnknownEvaluatorError, match="unknown evaluator 'jpg'; use one of jpeg, ocr"):
        evaluator_class("jpg")
    with pytest.raises(MethodError, match="unknown method .dpo.; use one of rlg, weight_mix, cfg_rl, best_of_n, rlg_fkc, fk_steering"):
        get_method("dpo", [1.0])


def test_an_unknown_scheduler_is_the_samplers_error_before_the_pipeline_is_touched():
    from rlg.sampling import SamplerError, make_scheduler

    with pytest.raises(SamplerError, match=r"^unknown scheduler 'euler'; use one of default, ddim, euler_ode, "):
        make_scheduler(object(), "euler")
