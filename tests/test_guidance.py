"""rlg.guidance: the RLG mix pred_base + w * (pred_rl - pred_base) (arXiv 2508.21016, Eq. of the guided
prediction), the scale check and the step window, against values written out by hand."""

from __future__ import annotations

import re

import pytest
import torch

from rlg.guidance import ScaleError, StepWindow, check_scales, rlg_mix


def test_rlg_mix_is_base_plus_w_times_the_difference_per_sample():
    base = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    rl = torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    out = rlg_mix(base, rl, torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64))  # one scale per row
    assert out.dtype == torch.float32  # computed in the predictions' dtype
    assert out.tolist() == [[1.0, 2.0], [3.0, 0.0], [6.0, -3.0]]  # w=0 base, w=1 RL, w=2.5 extrapolates
    assert rlg_mix(base, rl, 0.5).tolist() == [[2.0, 1.0]] * 3  # a float scale applies to every row


def test_check_scales_returns_floats_and_names_the_bad_entry():
    assert check_scales([0, 1.5, 3]) == [0.0, 1.5, 3.0] and check_scales(torch.tensor([2.0])) == [2.0]
    for bad, shown in ((float("nan"), "#1 is nan"), (True, "#1 is True (bool)"), ("2", "#1 is '2' (str)")):
        with pytest.raises(ScaleError, match=re.escape(f"RLG scale {shown}") + ".*finite numbers"):
            check_scales([0.0, bad])


def test_step_window_holds_start_inclusive_stop_exclusive_and_fills_outside():
    window = StepWindow(start=0.25, stop=0.75)
    assert window.steps_inside(4) == [1, 2] and StepWindow().steps_inside(3) == [0, 1, 2]
    w = torch.tensor([0.0, 2.0])
    assert window.effective_scales(w, 1, 4) is w  # inside: the scales as given
    assert window.effective_scales(w, 3, 4).tolist() == [1.0, 1.0]  # outside, "rl": the RL model alone
    assert StepWindow(0.5, 1.0, "base").effective_scales(w, 0, 4).tolist() == [0.0, 0.0]  # the base alone
    with pytest.raises(ValueError, match="0 <= start <= stop <= 1"):
        StepWindow(start=0.8, stop=0.2)
    with pytest.raises(ValueError, match="outside='none'"):
        StepWindow(outside="none")
