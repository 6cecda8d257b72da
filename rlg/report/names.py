"""Readable names of metrics, with their sign convention and direction: one source for the report's
tables, figures, headline and the README's wording. Metric ids are the evaluators' own
(``rlg.evaluators.*.metrics``); an id not listed here is shown as is.
"""

from __future__ import annotations

# Readable axis labels of the evaluators' metric ids (rlg.evaluators.*.metrics); an id not listed is shown as is.
METRIC_LABELS = {
    "pickscore": "PickScore",
    "hps_v2.0": "HPSv2.0",
    "hps_v2.1": "HPSv2.1",
    "imagereward": "ImageReward",
    "aesthetic": "LAION aesthetic score",
    "clip_score": "CLIP score",
    "ocr_accuracy": "OCR accuracy",
    "geneval_correct": "GenEval accuracy",
    "geneval_overall": "GenEval overall",
    "jpeg_incompressibility": "JPEG size (kB)",
    "jpeg_compressibility": "JPEG compressibility (−kB)",
    "digit_prob": "digit probability",
    "digit_margin": "digit log-odds",
    "digit_correct": "digit accuracy",
    "digit_mahalanobis": "digit feature distance",
}
# What each number is, with its sign convention and direction: one line per metric in the report's glossary.
METRIC_DEFINITIONS = {
    "pickscore": "PickScore: logit_scale·cos(text, image) of PickScore_v1 (about 18-24); higher is better.",
    "hps_v2.0": "HPSv2.0: 100·cos(text, image) of the HPSv2 model; higher is better (not comparable to v2.1).",
    "hps_v2.1": "HPSv2.1: 100·cos(text, image) of the HPSv2.1 model; higher is better (not comparable to v2.0).",
    "imagereward": "ImageReward: BLIP + MLP, normalised as upstream; higher is better.",
    "aesthetic": "LAION aesthetic predictor v2 on CLIP ViT-L/14, 1-10; higher is better.",
    "clip_score": "CLIP score: max(100·cos, 0) with openai/clip-vit-large-patch14; higher is better.",
    "ocr_accuracy": "OCR accuracy: 1 - edit distance / length of the quoted text (Flow-GRPO); higher is better.",
    "geneval_correct": "GenEval: share of images whose objects, counts, colours and positions match; higher is "
                       "better.",
    "geneval_overall": "GenEval overall: unweighted mean of the six task accuracies; higher is better.",
    "jpeg_compressibility": "JPEG compressibility: minus the PIL JPEG (quality 95) file size in kB, the DDPO "
                            "reward; higher (a smaller file) is better.",
    "jpeg_incompressibility": "JPEG size: the PIL JPEG (quality 95) file size in kB, the DDPO incompressibility "
                              "reward; higher is better.",
    "digit_prob": "digit probability: the zoo classifier's probability of the digit the prompt names (alignment); "
                  "higher is better.",
    "digit_margin": "digit log-odds: log(p / (1 - p)) of the digit the prompt names under the zoo classifier "
                    "(alignment, unbounded where the probability saturates); higher is better.",
    "digit_correct": "digit accuracy: share of images whose top class under the zoo classifier is the digit the "
                     "prompt names (alignment); higher is better.",
    "digit_mahalanobis": "digit feature distance: per-image squared Mahalanobis distance of the zoo classifier's "
                         "features from 500 real digits, per feature dimension (quality; evaluator digit_fd, whose "
                         "set-level Fréchet distance is the zoo table's digit_fd); lower is better.",
}
SCALE_LABEL = "RLG scale w"  # not "guidance scale", which reads as the CFG guidance_scale


def metric_label(metric: str) -> str:
    """The readable name of a metric id; a "metric (version)" id keeps its version."""
    base, sep, rest = str(metric).partition(" (")
    return METRIC_LABELS.get(base, base) + (f" ({rest}" if sep else "")


def metric_title(metric: str) -> str:
    """The readable name with the id in brackets when they differ: "digit probability [digit_prob]"."""
    label = metric_label(metric)
    return label if label == str(metric) else f"{label} [{metric}]"
