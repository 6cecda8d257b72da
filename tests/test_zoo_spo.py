"""The SPO trainer of the digits zoo (rlg.zoo.train_digits_spo): its step loss, candidate comparison and
transition log-density against hand computations, the step-aware judging of the multi-sample trajectories, and
resumption. Tiny budgets on the shipped base (4 DDIM steps, 2 prompts, 2 candidates); the shipped SPO pair's
loading and control are in tests/test_zoo_digits.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlg.zoo import WEIGHTS_DIR


def _need(*models: str) -> None:
    missing = [m for m in models if not (WEIGHTS_DIR / m).exists()]
    if missing:
        pytest.skip(f"zoo weights {missing} absent from {WEIGHTS_DIR}; train them with `python -m rlg.zoo.train "
                    "digits --ship`")


def test_transition_log_prob_is_the_gaussian_density_averaged_over_dimensions():
    from rlg.zoo.train_digits_spo import transition_log_prob

    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    hand = [sum(-(xv - mv) ** 2 / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
                for xv, mv in zip(x[n].flatten().tolist(), m[n].flatten().tolist())) / 8
            for n, s in enumerate(sigma.tolist())]
    torch.testing.assert_close(transition_log_prob(x, m, sigma), torch.tensor(hand), rtol=1e-6, atol=1e-6)


def test_spo_loss_against_hand_computation():
    """-log sigmoid(beta (log clamp(r_w) - log clamp(r_l))), with one pair inside the clamp and one clamped on both
    sides (its loss is a constant: no gradient), computed here with math on floats."""
    from rlg.zoo.train_digits_spo import spo_loss

    beta, eps = 10.0, 0.1
    lw = torch.tensor([-1.00, -2.0], requires_grad=True)
    ll = torch.tensor([-1.10, -2.0], requires_grad=True)
    rw, rl = torch.tensor([-1.02, -2.5]), torch.tensor([-1.07, -1.5])
    loss, ratio_w, ratio_l = spo_loss(lw, ll, rw, rl, beta, eps)
    r0w, r0l = math.exp(0.02), math.exp(-0.03)  # inside [0.9, 1.1]
    r1w, r1l = 1.1, 0.9  # exp(0.5) and exp(-0.5), clamped
    per = [-math.log(1 / (1 + math.exp(-beta * (math.log(a) - math.log(b))))) for a, b in ((r0w, r0l), (r1w, r1l))]
    assert loss.item() == pytest.approx(sum(per) / 2, rel=1e-5)
    torch.testing.assert_close(ratio_w, torch.tensor([r0w, r1w]))
    torch.testing.assert_close(ratio_l, torch.tensor([r0l, r1l]))
    loss.backward()
    # d loss / d logp_w for the unclamped pair: -(1 - sigmoid(z)) * beta / 2 (mean over 2 pairs), z = beta * 0.05
    z = beta * (math.log(r0w) - math.log(r0l))
    assert lw.grad[0].item() == pytest.approx(-(1 - 1 / (1 + math.exp(-z))) * beta / 2, rel=1e-4)
    assert ll.grad[0].item() == pytest.approx((1 - 1 / (1 + math.exp(-z))) * beta / 2, rel=1e-4)
    assert lw.grad[1].item() == 0.0 and ll.grad[1].item() == 0.0


def test_compare_candidates_picks_best_and_worst_and_thresholds_the_softmax_gap():
    from rlg.zoo.train_digits_spo import compare_candidates

    scores = torch.tensor([[1.0, 5.0, 2.0],
                           [3.0, 5.2, 2.0],
                           [0.0, 4.9, 2.0]])  # 3 candidates (rows) for 3 states (columns)
    win, lose, valid = compare_candidates(scores, 0.3)
    assert win.tolist() == [1, 1, 0] and lose.tolist() == [2, 2, 2]
    # softmax gap = tanh(gap / 2): 3.0 -> 0.905 (kept), 0.3 -> 0.149 (dropped), 0 -> 0 (dropped)
    assert valid.tolist() == [True, False, False]
    assert compare_candidates(scores, 0.1)[2].tolist() == [True, True, False]


@pytest.fixture(scope="module")
def tiny_parts():
    _need("digits_base", "digits_classifier")
    from rlg.zoo import resolve_zoo_id
    from rlg.zoo.digits_rl import load_base, load_classifier

    return load_base(resolve_zoo_id("zoo:digits_base")), load_classifier()


def test_step_pairs_are_judged_on_the_x0_prediction_at_the_next_step(tiny_parts):
    """Every recorded winner scores at least its loser under the step-aware model, recomputed here from the policy's
    CFG epsilon at the candidate (x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)) and, at the last step, from the
    candidate itself; with threshold -1 every transition is kept: (num_steps - divert_start) x B of them."""
    from rlg.zoo.digits_rl import cfg_eps, step_coefficients
    from rlg.zoo import digits as D
    from rlg.zoo.train_digits_spo import DigitStepPreference, sample_step_pairs

    parts, clf = tiny_parts
    pref = DigitStepPreference(parts, clf)
    digits = torch.tensor([3, 7])
    out = sample_step_pairs(parts, parts.unet, pref, digits, torch.Generator().manual_seed(0), k=2, divert_start=1,
                            threshold=-1.0, num_steps=4)
    assert len(out["step"]) == 3 * 2 and out["step"].tolist() == [1, 1, 2, 2, 3, 3]
    assert out["digit"].tolist() == [3, 7] * 3 and out["final_score"].shape == (4,)
    assert not torch.equal(out["x_w"], out["x_l"])
    coefs = step_coefficients(parts.scheduler, 4)
    emb = D.encode_prompts((parts.tokenizer, parts.text_encoder), D.PROMPTS + [""])
    cond, uncond = emb[out["digit"]], emb[10:11].expand(len(out["digit"]), -1, -1)

    def judged(x, step):
        if step == 3:
            return pref(x, out["digit"])
        t = coefs[step + 1]["t"]
        a = parts.scheduler.alphas_cumprod[t]
        with torch.no_grad():
            eps = cfg_eps(parts.unet, x, t, cond, uncond, 2.0)
        return pref((x - (1 - a).sqrt() * eps) / a.sqrt(), out["digit"])

    for step in (1, 2, 3):
        rows = out["step"] == step
        s_w, s_l = judged(out["x_w"], step)[rows], judged(out["x_l"], step)[rows]
        assert (s_w >= s_l - 1e-3).all(), (step, s_w, s_l)
    with pytest.raises(ValueError, match="divert_start 4 must lie in"):
        sample_step_pairs(parts, parts.unet, pref, digits, torch.Generator(), k=2, divert_start=4, threshold=0.3,
                          num_steps=4)


TINY = dict(batch_size=2, k=2, divert_start=2, num_steps=4, train_batch=4, chunk=1)


def test_train_spo_resumes_to_the_uninterrupted_result(tmp_path):
    """Two iterations in one call equal one call of 1 then a call of 2 (resumed from the state file), tensor for
    tensor; the finished run leaves only the diffusers-format LoRA when keep_state is False; other arguments than
    the state's are refused before any work."""
    _need("digits_base", "digits_classifier")
    from safetensors.torch import load_file

    from rlg.zoo.train_digits_spo import STATE_FILE, train_spo

    quiet = lambda m: None  # noqa: E731
    once = train_spo(steps=2, out_dir=tmp_path / "once", keep_state=False, log=quiet, **TINY)
    train_spo(steps=1, out_dir=tmp_path / "twice", log=quiet, **TINY)
    again = train_spo(steps=2, out_dir=tmp_path / "twice", log=quiet, **TINY)
    assert [h["iter"] for h in again["history"]] == [0, 1] and again["history"] == once["history"]
    a = load_file(str(tmp_path / "once" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "twice" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and len(a) == 96 and all(torch.equal(a[key], b[key]) for key in a)
    assert sorted(p.name for p in (tmp_path / "once").iterdir()) == ["pytorch_lora_weights.safetensors"]
    with pytest.raises(ValueError, match=f"{STATE_FILE} was written with"):
        train_spo(steps=3, out_dir=tmp_path / "twice", log=quiet, **{**TINY, "k": 3})
