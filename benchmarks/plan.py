"""What both sides of the benchmark run (model, device, the pipeline's options), what one
measurement holds, and the names of the rows."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from opentr_pipeline.settings import DecodingSettings, DeviceSettings, Settings

SPAN_TARGET = 0.9  # pipeline span x realtime / raw x realtime, same workers
SCALING_TARGET = 1.6  # N workers x realtime / 1 worker x realtime
# The same quality: a worst-file word error rate at most this much above another's (relative),
# or within QUALITY_SLACK (absolute: at 0.01, one word in a hundred is noise, not a verdict).
SAME_QUALITY = 1.25
QUALITY_SLACK = 0.01
QUALITY_TARGET = 1.0  # pipeline x realtime / the fastest plain script of the same quality, same workers
RAW = "plain faster-whisper, batched (transcription span)"
RAW_SEQUENTIAL = "plain faster-whisper, sequential (transcription span)"
RAW_SEQUENTIAL_NO_VAD = "plain faster-whisper, sequential, no VAD (transcription span)"
PIPELINE_SPAN = "pipeline (transcription span)"
PIPELINE_WHOLE = "pipeline (whole command)"
RESIDENT_SPAN = "pipeline, resident worker (transcription span)"
RESIDENT_WHOLE = "pipeline, resident worker (whole command)"
# The pipeline as users get it by default: with who spoke when (the rows above run without, as the
# plain script finds no speakers). Its row carries DER, WDER and whether the voices were counted right.
PIPELINE_SPEAKERS = "pipeline with speakers (whole command)"
SPEAKERS_TARGET = 0.75  # with speakers x realtime / without, whole command, same workers
RESIDENT_TARGET = 0.95  # resident pipeline span x realtime / raw x realtime, same workers
# On a CPU, how far N workers are from N x one core says whether the workers or the cores are
# the limit: one worker with all the cores cannot keep them all busy (the beam search barely
# speeds up with more threads), so N-vs-1 understates how well the workers scale.
RAW_ONE_CORE = "plain faster-whisper, batched, 1 thread (one core)"


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to measure."""


@dataclass
class Measurement:
    configuration: str
    workers: int
    files: int
    audio_s: float
    wall_s: float
    includes: str
    details: dict = field(default_factory=dict)
    wer: dict[str, float] = field(default_factory=dict)  # file name -> word error rate of what it produced

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def wer_mean(self) -> float | None:
        return sum(self.wer.values()) / len(self.wer) if self.wer else None

    @property
    def wer_worst(self) -> float | None:
        return max(self.wer.values()) if self.wer else None

    def as_good_as(self, other: "Measurement") -> bool:
        """Whether this row's words are as good as `other`'s (worst file, SAME_QUALITY)."""
        if self.wer_worst is None or other.wer_worst is None:
            return False
        return self.wer_worst <= max(other.wer_worst * SAME_QUALITY, other.wer_worst + QUALITY_SLACK)

    def to_dict(self) -> dict:
        mean, worst = self.wer_mean, self.wer_worst
        return {**asdict(self), "x_realtime": round(self.x_realtime, 2),
                "wer_mean": None if mean is None else round(mean, 4), "wer_worst": None if worst is None else round(worst, 4)}


@dataclass(frozen=True)
class BenchPlan:
    """What both sides run: model, device, compute type and the pipeline's own options."""

    model: str
    device: str  # "cpu" or "cuda"
    device_index: int
    compute_type: str
    beam_size: int
    batch_size: int | str  # WHISPER_BATCH_SIZE: a number, or "auto" (batch_for)
    vad_filter: bool
    language: str | None

    def device_for(self, workers: int):
        """The pipeline's device plan for N workers, so raw gets the same thread split."""
        from opentr_pipeline.engine.devices import plan_devices

        (device,) = plan_devices(self.devices(workers))
        return device

    def batch_for(self, workers: int) -> int:
        """The batch the pipeline's workers decode at with N workers (auto picks by thread split)."""
        from opentr_pipeline.engine.transcription import resolve_batch_size

        return resolve_batch_size(self.batch_size, self.device_for(workers))

    def devices(self, workers: int) -> DeviceSettings:
        return DeviceSettings(gpu_scale_enabled=True, gpu_scale_workers=workers,
                              gpu_scale_device_id=self.device_index, gpu_device_id=self.device_index,
                              whisper_device=self.device)

    def pipeline_env(self, workers: int, speakers: bool = False) -> dict[str, str]:
        """The settings' own variables (settings.py), so the pipeline runs exactly this plan. The
        plain script finds no speakers, so neither does the pipeline here: the same output on both
        sides (what speakers cost is benchmarks/speakers_cost.py's)."""
        decoding = DecodingSettings(whisper_model=self.model, whisper_compute_type=self.compute_type,
                                    beam_size=self.beam_size, batch_size=self.batch_size,
                                    vad_filter=self.vad_filter, language=self.language,
                                    diarization="embedded" if speakers else "off")
        return {**self.devices(workers).to_env(), **decoding.to_env()}


def make_plan(settings: Settings, device: str | None, model: str | None,
              compute_type: str | None) -> BenchPlan:
    from opentr_pipeline.engine.devices import cuda_device_count
    from opentr_pipeline.engine.transcription import resolve_compute_type
    from opentr_pipeline.settings import SettingsError, check_model

    devices, decoding = settings.devices, settings.decoding
    wanted = device or devices.whisper_device
    cuda = cuda_device_count()
    if wanted == "cuda" and cuda == 0:
        raise SettingsError("--device cuda: no CUDA device is visible on this machine")
    kind = "cuda" if wanted != "cpu" and cuda > 0 else "cpu"
    index = devices.gpu_scale_device_id if devices.gpu_scale_enabled else devices.gpu_device_id
    return BenchPlan(
        model=check_model(model, "--model") if model else decoding.whisper_model,
        device=kind,
        device_index=index if kind == "cuda" else 0,
        compute_type=resolve_compute_type(compute_type or decoding.whisper_compute_type, kind),
        beam_size=decoding.beam_size,
        batch_size=decoding.batch_size,
        vad_filter=decoding.vad_filter,
        language=decoding.language,
    )


def _cpu_s(times: os.times_result, children: bool = False) -> float:
    """CPU seconds (user + system): a cost that other people's load on the machine cannot inflate."""
    if children:
        return times.children_user + times.children_system
    return times.user + times.system
