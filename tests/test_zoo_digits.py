"""The digits half of the trained zoo (rlg.zoo): evaluators, loading, and RLG control on the shipped weights.

References are independent of rlg.denoiser: the stock StableDiffusionPipeline with the base UNet, the
DPO UNet, or the DDPO LoRA loaded by diffusers itself. The control claims are the quickstart's, on
fewer samples: w = 0.5 strictly between base and RL (so the reward is monotone over [0, 1]), and w = 2
above w = 1 by at least 3 standard errors of the paired difference (so monotone over [0, 2]).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from rlg.zoo import WEIGHTS_DIR, resolve_zoo_id

PAIRS = ("zoo_digits_dpo", "zoo_digits_ddpo_compress", "zoo_digits_ddpo_incompress", "zoo_digits_spo")
MODELS = ("digits_classifier", "digits_base", "digits_dpo", "digits_ddpo_compress", "digits_ddpo_incompress",
          "digits_spo")


def _need(*models: str) -> None:
    missing = [m for m in models if not (WEIGHTS_DIR / m).exists()]
    if missing:
        pytest.skip(f"zoo weights {missing} absent from {WEIGHTS_DIR}; train them with `python -m rlg.zoo.train "
                    "digits --ship`")


def _u8(images) -> np.ndarray:
    return (np.asarray(images).clip(0, 1) * 255).round().astype(np.uint8)


def _real_heldout(n: int = 100):
    from rlg.zoo import digits as D

    split = D.load_split()
    imgs = _u8(D.to_images(split["test_x"][:n]).permute(0, 2, 3, 1).numpy())
    return imgs, split["test_y"][:n]


# ---------------------------------------------------------------------------------------------
def test_resolve_zoo_id():
    hub_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_zoo_id(hub_id) == hub_id
    assert resolve_zoo_id("zoo:digits_classifier") == str(WEIGHTS_DIR / "digits_classifier")
    with pytest.raises(FileNotFoundError, match="rlg.zoo.train"):
        resolve_zoo_id("zoo:no_such_model")


def test_digit_prompt_parsing():
    from rlg.zoo.digits import PROMPTS, digit_of_prompt

    assert [digit_of_prompt(p) for p in PROMPTS] == list(range(10))
    with pytest.raises(ValueError, match="names no digit"):
        digit_of_prompt("a photo of a cat")


def test_digit_evaluators_on_real_digits():
    _need("digits_classifier")
    from rlg.evaluators.base import REGISTRY, Sample, get_evaluator
    from rlg.zoo.digits import prompt_for

    assert {"digit_prob", "digit_fd"} <= set(REGISTRY)
    imgs, labels = _real_heldout(100)
    right = [Sample(str(i), Image.fromarray(im), prompt_for(y)) for i, (im, y) in enumerate(zip(imgs, labels))]
    wrong = [Sample(str(i), Image.fromarray(im), prompt_for((y + 1) % 10))
             for i, (im, y) in enumerate(zip(imgs, labels))]
    prob = get_evaluator("digit_prob")
    assert prob.version.startswith("digit_prob/")
    p_right = np.array([r["digit_prob"] for r in prob.score(right)])
    p_wrong = np.array([r["digit_prob"] for r in prob.score(wrong)])
    assert p_right.mean() > 0.95 and p_wrong.mean() < 0.05
    # the same number by hand: the classifier's softmax at the true label
    from rlg.evaluators.digits import DigitClassifier

    clf = DigitClassifier.load(resolve_zoo_id("zoo:digits_classifier"))
    x = torch.from_numpy(imgs.astype(np.float32) / 255).permute(0, 3, 1, 2)
    ref = clf(x).softmax(1)[torch.arange(len(labels)), torch.as_tensor(labels)].detach().numpy()
    np.testing.assert_allclose(p_right, ref, rtol=1e-5, atol=1e-6)

    fd = get_evaluator("digit_fd")
    noise = np.random.default_rng(0).integers(0, 256, imgs.shape, dtype=np.uint8)
    fd_real = fd.score_set(right)["digit_fd"]
    fd_noise = fd.score_set([Sample(str(i), Image.fromarray(im)) for i, im in enumerate(noise)])["digit_fd"]
    assert fd_real < 0.2 * fd_noise, (fd_real, fd_noise)
    maha_real = np.mean([r["digit_mahalanobis"] for r in fd.score(right)])
    maha_noise = np.mean([r["digit_mahalanobis"] for r in fd.score([Sample("n", Image.fromarray(noise[0]))])])
    assert maha_real < maha_noise


def test_frechet_distance_against_closed_form():
    from rlg.evaluators.digits import frechet_distance

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    # N(mu_g, diag(s_g^2)) vs N(0, I): ||mu||^2 + sum (s_g - 1)^2 for diagonal covariances
    expected = 1.0 + (1 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    assert frechet_distance(x, np.zeros(3), np.eye(3)) == pytest.approx(expected, abs=0.05)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(x[:1], np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------
def _stock(pipe, prompts, seeds, steps=20):
    from rlg.zoo.digits_eval import sampler_settings

    s = sampler_settings()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(prompt=prompts, negative_prompt=[""] * len(prompts), guidance_scale=s.guidance_scale,
                   num_inference_steps=steps, eta=s.eta, height=32, width=32, output_type="np",
                   generator=[torch.Generator().manual_seed(x) for x in seeds]).images
    return _u8(out)


@pytest.mark.parametrize("name", PAIRS)
def test_zoo_pair_loads_and_equals_stock_pipelines(name):
    _need("digits_base", name.replace("zoo_", ""))
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from rlg.pairs import load_pair
    from rlg.sampling import noise_seed
    from rlg.zoo.digits_eval import generate, pair_spec

    spec = pair_spec(name)
    pair = load_pair(spec)
    if spec.rl_kind == "diffusers_lora":  # every LoRA layer of the file found its module
        assert pair.info["lora_layers"] == 48 and pair.info["lora_scalings"] == [1.0]
    prompts = ["a handwritten digit 3", "a handwritten digit 7"]
    got = generate(pair, [0.0, 1.0], 1, seed=5, prompts=prompts)
    seeds = [noise_seed(5, i, 0) for i in range(2)]

    base = StableDiffusionPipeline.from_pretrained(spec.base.id, safety_checker=None, requires_safety_checker=False)
    stock_base = _stock(base, prompts, seeds)
    if spec.rl_kind == "full":
        base.unet = UNet2DConditionModel.from_pretrained(spec.rl.id, subfolder=spec.rl.subfolder)
    else:
        base.load_lora_weights(spec.rl.id, weight_name=spec.rl.weight_name)
    stock_rl = _stock(base, prompts, seeds)
    diff = lambda a, b: int(np.abs(a.astype(int) - b.astype(int)).max())  # noqa: E731
    assert diff(got[0.0]["images"], stock_base) <= 1
    assert diff(got[1.0]["images"], stock_rl) <= 1
    assert diff(stock_base, stock_rl) > 1, "the RL model changes nothing"


CONTROL = {  # pair -> samples per prompt (10 prompts); at seed 11 DPO's w=2 - w=1 is 5.8 paired SE with 6
    "zoo_digits_dpo": 6,
    "zoo_digits_ddpo_compress": 6,
    "zoo_digits_ddpo_incompress": 6,
}
SCALES = (0.0, 0.5, 1.0, 2.0)


@functools.cache
def _control_metrics(name: str) -> dict[float, dict[str, np.ndarray]]:
    """Per-image metrics of the shipped pair at each scale (paired noise, seed 11); computed once per pair."""
    from rlg.pairs import load_pair
    from rlg.zoo.digits_eval import generate, pair_spec, rewards

    gen = generate(load_pair(pair_spec(name)), list(SCALES), CONTROL[name], seed=11)
    return {w: rewards(g["images"], g["prompts"]) for w, g in gen.items()}


def _control_rewards(name: str) -> dict[float, np.ndarray]:
    from rlg.zoo.digits_eval import REWARD

    return {w: m[REWARD[name]] for w, m in _control_metrics(name).items()}


# The control runs are cached per process (_control_metrics): under pytest-xdist their tests share one worker.
CONTROL_GROUP = pytest.mark.xdist_group("zoo_digits_control")


@CONTROL_GROUP
def test_base_follows_its_prompt():
    """The shipped base draws the prompted digit (>= 85% by the shipped classifier; 300 / 300 at 3 sampling seeds
    when shipped, rlg/zoo/README.md): its w = 0 images in the DPO pair's control run, 6 per prompt."""
    _need("digits_classifier", "digits_base", "digits_dpo")
    correct = _control_metrics("zoo_digits_dpo")[0.0]["digit_correct"]
    assert len(correct) == 60 and correct.mean() >= 0.85, correct.mean()


# The compressibility pair has its own cheaper check below (30 images at w = 0, 1, 2).
CONTROLLED = ("zoo_digits_dpo", "zoo_digits_ddpo_incompress")


@CONTROL_GROUP
@pytest.mark.parametrize("name", CONTROLLED)
def test_control_interpolation_on_shipped_weights(name):
    """Reduced quickstart claim: the reward rises from base (w=0) through w=0.5 to RL (w=1), strictly."""
    _need("digits_classifier", "digits_base", name.replace("zoo_", ""))
    r = _control_rewards(name)
    means = [r[w].mean() for w in (0.0, 0.5, 1.0)]
    assert means[0] < means[1] < means[2], means


@CONTROL_GROUP
@pytest.mark.parametrize("name", CONTROLLED)
def test_control_extrapolation_on_shipped_weights(name):
    """Reduced quickstart claim: w = 2 above w = 1 by at least 3 standard errors of the paired difference."""
    _need("digits_classifier", "digits_base", name.replace("zoo_", ""))
    r = _control_rewards(name)
    d = r[2.0] - r[1.0]
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert d.mean() >= 3 * se, (d.mean(), se, [r[w].mean() for w in SCALES])


def test_compress_pair_extrapolates_on_shipped_weights():
    """The compressibility pair (per-prompt DDPO baselines, rlg/zoo/README.md) on 10 prompts x 3 samples at sampling
    seed 0: JPEG kB falls from w = 0 to 1 to 2, and w = 2 is below w = 1 by >= 3 paired SEs (measured when shipped:
    1.0768 / 1.0651 / 1.0573 kB, w2 - w1 -0.0078 ± 0.0018 kB = 4.3 SE; at 3 seeds x 60 images 4.6 / 4.8 / 7.1 SE)."""
    _need("digits_classifier", "digits_base", "digits_ddpo_compress")
    from rlg.pairs import load_pair
    from rlg.zoo.digits_eval import generate, pair_spec, rewards

    gen = generate(load_pair(pair_spec("zoo_digits_ddpo_compress")), [0.0, 1.0, 2.0], 3, seed=0)
    kb = {w: -rewards(g["images"], g["prompts"])["jpeg_compressibility"] for w, g in gen.items()}
    means = [round(float(kb[w].mean()), 5) for w in (0.0, 1.0, 2.0)]
    assert means[0] > means[1] > means[2], means
    d = kb[1.0] - kb[2.0]
    assert d.mean() >= 3 * d.std(ddof=1) / np.sqrt(len(d)), (means, d.mean(), d.std(ddof=1))


def test_spo_pair_interpolates_and_extrapolates_on_shipped_weights():
    """The SPO pair (step-aware preference on digit_margin, rlg/zoo/README.md) on 10 prompts x 3 samples at sampling
    seed 0: digit_margin rises from w = 0 to 1 to 2, and w = 2 is above w = 1 by >= 3 paired SEs (measured when
    shipped: 18.24 / 22.50 / 24.54, w2 - w1 +2.04 ± 0.50 = 4.0 SE)."""
    _need("digits_classifier", "digits_base", "digits_spo")
    from rlg.pairs import load_pair
    from rlg.zoo.digits_eval import generate, pair_spec, rewards

    gen = generate(load_pair(pair_spec("zoo_digits_spo")), [0.0, 1.0, 2.0], 3, seed=0)
    r = {w: rewards(g["images"], g["prompts"])["digit_margin"] for w, g in gen.items()}
    means = [round(float(r[w].mean()), 3) for w in (0.0, 1.0, 2.0)]
    assert means[0] < means[1] < means[2], means
    d = r[2.0] - r[1.0]
    assert d.mean() >= 3 * d.std(ddof=1) / np.sqrt(len(d)), (means, d.mean(), d.std(ddof=1))


# ---------------------------------------------------------------------------------------------
# The reward with headroom (log-odds), the diversity metric (class entropy) and the quality metric (KID)
def test_log_odds_against_probabilities():
    from rlg.evaluators.digits import log_odds

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [40.0, 0.0, 1.0]])
    targets = torch.tensor([0, 2, 0])
    p = logits.double().softmax(1)[torch.arange(3), targets]
    got = log_odds(logits, targets)
    np.testing.assert_allclose(got[:2].numpy(), torch.log(p / (1 - p))[:2].numpy(), rtol=1e-12)
    assert got[1].item() == pytest.approx(np.log(0.5))  # uniform over 3: p = 1/3, odds 1/2
    # p rounds to 1 in float32 here; the log-odds stays finite: 40 - log(e^0 + e^1)
    assert got[2].item() == pytest.approx(40 - np.log(1 + np.e), abs=1e-9)


def test_class_entropy_known_values():
    from rlg.evaluators.digits import class_entropy

    assert class_entropy(list(range(10)) * 3) == pytest.approx(np.log2(10))
    assert class_entropy([4] * 7) == 0.0
    assert class_entropy([1, 1, 8, 8]) == pytest.approx(1.0)


def _kid_brute(f, r):
    """Unbiased MMD^2 with the cubic kernel by explicit loops (Binkowski et al. 2018, eq. 4), on scaled features."""
    s = np.sqrt((r**2).sum(1).mean() / r.shape[1])
    f, r = f / s, r / s
    k = lambda a, b: (a @ b / len(a) + 1) ** 3  # noqa: E731
    n, m = len(f), len(r)
    xx = sum(k(f[i], f[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(r[i], r[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(f[i], r[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kernel_distance_against_brute_force_and_jackknife():
    from rlg.evaluators.digits import kernel_distance

    rng = np.random.default_rng(0)
    f, r = rng.normal(size=(7, 3)) + 0.5, rng.normal(size=(9, 3))
    got = kernel_distance(f, r)
    assert got["kid"] == pytest.approx(_kid_brute(f, r), rel=1e-10)
    loo = np.array([_kid_brute(np.delete(f, i, 0), r) for i in range(len(f))])
    se = np.sqrt((len(f) - 1) / len(f) * ((loo - loo.mean()) ** 2).sum())
    assert got["kid_se"] == pytest.approx(se, rel=1e-9)
    # unbiased: two large samples of one distribution give ~0 within the SE; a shifted one does not
    same = kernel_distance(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)))
    shifted = kernel_distance(rng.normal(size=(400, 4)) + 0.5, rng.normal(size=(400, 4)))
    assert abs(same["kid"]) < 3 * same["kid_se"] + 0.01 and shifted["kid"] > 5 * shifted["kid_se"], (same, shifted)
    with pytest.raises(ValueError, match="N >= 3"):
        kernel_distance(f[:2], r)


def test_ddpo_advantages_batch_and_per_prompt_group():
    """The shipped recipe's batch-mean baseline, and the per-prompt group baseline (DDPO's per-prompt stat
    tracking): a prompt's size offset drops out of the group advantages, not out of the batch ones."""
    from rlg.zoo.train_digits_ddpo import advantages, train_ddpo

    r = torch.tensor([1.0, 1.2, 2.0, 2.4], dtype=torch.float64)  # two prompts of two samples, the second 1 kB larger
    torch.testing.assert_close(advantages(r, None, 0.1), torch.tensor([-6.5, -4.5, 3.5, 7.5]))
    torch.testing.assert_close(advantages(r, 2, 0.1), torch.tensor([-1.0, 1.0, -2.0, 2.0]))
    sd = torch.tensor([0.2, 0.4]).repeat_interleave(2) / np.sqrt(2)  # each group's std (n - 1)
    torch.testing.assert_close(advantages(r, 2, 0.1, "std"), torch.tensor([-0.1, 0.1, -0.2, 0.2]) / (sd + 1e-6))
    with pytest.raises(ValueError, match="group_size 3 must be >= 2 and divide batch_size 8"):
        train_ddpo(group_size=3, batch_size=8)
    with pytest.raises(ValueError, match="adv_norm 'z'; use 'scale' or 'std'"):
        train_ddpo(adv_norm="z")
