"""The GPU proof in one command, on a bare host with the kit of gpu_kit.py (issue 18).

Installs the kit into it, makes CTranslate2 find cuBLAS (CUDA 13's `libcublas.so.13` under the
name `libcublas.so.12` it asks for), checks that CTranslate2 sees the GPU, then measures, printing
as it goes and rewriting OUT/gpu-proof.json after every figure (a run cut short keeps what it had):

1. tiny.en with its real weights on the long conversations: plain faster-whisper batching and
   the project's engine (chunks of joined speech, the chunk guard; at its default beam 2, and at
   beam 5 beside, as the beam was chosen on a CPU), without and with speakers
   (CAM++ voice prints on the same device, in the same workers), 1 and 4 workers sharing one
   model: word error rate (mean, worst file), x realtime, the speakers' share of the time;
2. a model of large-v3-turbo's shape with RANDOM weights (built here with transformers, converted
   to float16): x realtime for 1, 2, 4 and 8 workers sharing one model at batch 8, 16 and 32, each
   decode pinned to the tokens real speech gives per 30-s window (end of text suppressed); peak
   device memory per configuration beside what the project's VRAM check predicts, and where it
   runs out. It measures compute, not words: every such row says so.

Each configuration runs in a process of its own, so one that runs out of memory fails alone
and every peak starts from an empty device.

    python3 benchmarks/gpu_proof.py --kit /tmp/opentr-kit --out $OUT                 # GPU host
    .venv/bin/python benchmarks/gpu_proof.py --kit gpu-kit --out /tmp/p --device cpu --small
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # transformers' WhisperConfig fields
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                           decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128),
    "small-random": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                         decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=80),
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- setting the host up (the parent process) ---------------------------------------------------

def install(kit: Path) -> Path:
    """The kit's wheels into kit/site (once), and an empty `av` before any other."""
    site = kit / "site"
    wheels = sorted(glob.glob(str(kit / "wheels" / "*.whl")))
    if wheels and not (site / "ctranslate2").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *wheels], check=True)
    # faster-whisper imports PyAV, which the host lacks; arrays are handed over, so it is never
    # used. The stub goes first on the path wherever this runs, so the CPU test takes this path too.
    (site / "av").mkdir(parents=True, exist_ok=True)
    (site / "av" / "__init__.py").write_text('"""Empty: no PyAV on the GPU host (gpu_proof.py)."""\n')
    return site


def link_cublas(kit: Path) -> Path | None:
    """kit/lib/libcublas.so.12 -> CUDA 13's cuBLAS from torch's nvidia packages, if there is one."""
    found = [path for folder in sys.path for path in glob.glob(os.path.join(folder, "nvidia", "*", "lib", "libcublas.so.1[0-9]*"))]
    found += glob.glob("/usr/local/cuda*/lib64/libcublas.so.1[0-9]*")
    if not found:
        return None
    lib = kit / "lib"
    lib.mkdir(exist_ok=True)
    link = lib / "libcublas.so.12"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(sorted(found)[-1])
    return Path(sorted(found)[-1])


def join_weights(kit: Path) -> Path:
    folder = kit / "tiny.en"
    pieces = sorted(folder.glob("model.bin.[0-9][0-9]"))
    if pieces:
        with open(folder / "model.bin", "wb") as whole:
            for piece in pieces:
                whole.write(piece.read_bytes())
        for piece in pieces:
            piece.unlink()
    return folder


def child_env(kit: Path, site: Path) -> dict[str, str]:
    env = dict(os.environ)
    def path(*first: str, rest: str) -> str:  # no empty entry: it would put the working folder on the path
        return os.pathsep.join([*first, *filter(None, [env.get(rest)])])

    env["PYTHONPATH"] = path(str(site), str(ROOT), str(ROOT / "benchmarks"), str(kit / "voices"), rest="PYTHONPATH")
    env["LD_LIBRARY_PATH"] = path(str(kit / "lib"), rest="LD_LIBRARY_PATH")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def in_child(env: dict, *args: str, limit_s: float) -> dict:
    """One stage in a fresh process; its last line of stdout is its JSON result."""
    try:
        done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True,
                              timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {limit_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {done.returncode}"}
    return json.loads(lines[-1])


# -- the stages (child processes) ---------------------------------------------------------------

def read_corpus(kit: Path):
    import numpy as np

    manifest = json.loads((kit / "corpus" / "corpus.json").read_text())
    files = []
    for name, entry in manifest["files"].items():
        with wave.open(str(kit / "corpus" / name)) as source:
            samples = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2").astype("float32") / 32768
        files.append((name, samples, entry["reference"]))
    return files


def facts(kit: Path, device: str) -> dict:
    import ctranslate2

    out = {"ctranslate2": ctranslate2.__version__, "cuda_devices": ctranslate2.get_cuda_device_count(),
           "python": sys.version.split()[0]}
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        out.update(gpu=torch.cuda.get_device_name(0), total_gib=round(total / 2**30, 1), free_gib=round(free / 2**30, 1),
                   compute_types=sorted(ctranslate2.get_supported_compute_types("cuda")))
    return out


class PeakMemory:
    """Device memory in use, sampled every 20 ms (CTranslate2's allocations are not torch's)."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self.baseline = self._used()

    def _used(self) -> int:
        if self.device != "cuda":
            return 0
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def __enter__(self):
        def sample():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self._used())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def free_at_start(self) -> int | None:
        if self.device != "cuda":
            return None
        import torch

        return torch.cuda.mem_get_info()[1] - self.baseline

    def gib(self) -> float | None:
        return round((self.peak - self.baseline) / 2**30, 2) if self.device == "cuda" else None


def run_threads(workers: int, items: list, decode) -> tuple[list, float]:
    clock = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(decode, items))
    return done, time.perf_counter() - clock


def stage_real(kit: Path, device: str, decoding: str, workers: int) -> dict:
    """tiny.en's real weights: plain batching or the engine, `workers` threads sharing one model."""
    from corpus import word_error_rate
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import resolve_batch_size

    files = read_corpus(kit)
    compute = "float16" if device == "cuda" else "int8"
    batch = resolve_batch_size("auto", DevicePlan(device, 0, workers, 1))  # both sides: the pipeline's batch
    model = WhisperModel(str(kit / "tiny.en"), device=device, compute_type=compute, num_workers=workers,
                         cpu_threads=1 if device == "cpu" else 4)
    items = files * max(1, (2 * workers + len(files) - 1) // len(files))  # every worker busy
    shares = []  # of each transcription's time, the voice prints'
    if decoding in ("engine", "engine+speakers", "engine at beam 5"):
        from opentr_pipeline.engine.transcription import DecodedAudio, TranscriptionOptions, transcribe

        speakers = decoding == "engine+speakers"
        options = TranscriptionOptions(batch_size=batch, voices=speakers)  # the defaults of settings.py (beam 2)
        if decoding == "engine at beam 5":  # the beam before, chosen on a CPU: what it costs on a GPU
            options = TranscriptionOptions(batch_size=batch, beam_size=5)
        embedder = None
        if speakers:  # as the pipeline does: one voice model per device, shared by its workers
            from opentr_pipeline.engine.voices import CamPlusPlus

            embedder = CamPlusPlus(f"{device}:0" if device == "cuda" else "cpu", threads=1 if device == "cpu" else None)

        def decode(item):
            done = transcribe(model, DecodedAudio(item[1], ""), options, model_name="tiny.en", compute_type=compute,
                              device=f"{device}:0", worker=0, embedder=embedder)
            if speakers:
                if done.speakers_error:
                    raise RuntimeError(done.speakers_error)
                shares.append(done.speakers_s / max(done.wall_s, 1e-9))
            return done.text, len(done.decoded_again)
    else:
        def decode(item):
            segments, _ = BatchedInferencePipeline(model).transcribe(item[1], batch_size=batch, beam_size=5,
                                                                      word_timestamps=True, vad_filter=True)
            return " ".join(s.text for s in segments), 0
    decode(files[0])  # warm-up: the first CUDA call builds kernels
    with PeakMemory(device) as memory:
        done, wall = run_threads(workers, items, decode)
    wer = [word_error_rate(item[2], text) for item, (text, _) in zip(items, done)]
    audio_s = sum(len(item[1]) for item in items) / 16000
    return {"stage": "real", "model": "tiny.en (real weights)", "decoding": decoding, "workers": workers,
            "compute_type": compute, "batch": batch, "audio_s": round(audio_s, 1), "x_realtime": round(audio_s / wall, 1),
            "wer_mean": round(sum(wer) / len(wer), 4), "wer_worst": round(max(wer), 4),
            "decoded_again": sum(n for _, n in done), "peak_gib": memory.gib(),
            **({"speakers_share": round(sum(shares) / len(shares), 3)} if shares else {})}



def stage_build(kit: Path, shape: str, device: str) -> dict:
    """A Whisper of `shape` with random weights, converted for CTranslate2 (float16 on a GPU)."""
    import shutil

    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    clock = time.perf_counter()
    vocabulary = (kit / "tiny.en" / "vocabulary.txt").read_text().splitlines()
    tiny = json.loads((kit / "tiny.en" / "config.json").read_text())
    config = WhisperConfig(vocab_size=len(vocabulary), max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=tiny.get("decoder_start_id", 50257),
                           suppress_tokens=tiny.get("suppress_ids", []),
                           begin_suppress_tokens=tiny.get("suppress_ids_begin", []), **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if device == "cuda" else "cpu"):
        model = WhisperForConditionalGeneration(config)
    hf = kit / f"{shape}-hf"
    model.to(torch.float16 if device == "cuda" else torch.float32).save_pretrained(hf)
    shutil.copy2(kit / "tiny.en" / "tokenizer.json", hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "WhisperTokenizerFast"}))
    out = kit / shape
    TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(
        str(out), quantization="float16" if device == "cuda" else "int8", force=True)
    shutil.copy2(kit / "tiny.en" / "vocabulary.txt", out / "vocabulary.txt")  # the converter's may differ in form
    (out / "preprocessor_config.json").write_text(json.dumps({"feature_size": config.num_mel_bins}))
    shutil.rmtree(hf)
    return {"stage": "build", "shape": shape, "parameters_m": round(model.num_parameters() / 1e6),
            "model_bin_mib": round((out / "model.bin").stat().st_size / 2**20), "build_s": round(time.perf_counter() - clock, 1)}


def stage_shaped(kit: Path, shape: str, device: str, workers: int, batch: int, tokens: int,
                 seconds: float | None = None) -> dict:
    """Throughput of the random-weights model: every window decodes exactly `tokens` tokens.
    `seconds`: each file cut to its first `seconds` (the memory-limit probe, many workers)."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from opentr_pipeline.engine.devices import worker_bytes, workers_that_fit

    files = read_corpus(kit)
    if seconds:
        files = [(name, samples[: int(seconds * 16000)], text) for name, samples, text in files]
    folder = kit / shape
    compute = "float16" if device == "cuda" else "int8"
    with PeakMemory(device) as memory:
        model = WhisperModel(str(folder), device=device, compute_type=compute, num_workers=workers,
                             cpu_threads=1 if device == "cpu" else 4)
        eot = model.hf_tokenizer.token_to_id("<|endoftext|>")
        items = files * max(1, (2 * workers + len(files) - 1) // len(files))

        # CTranslate2 lets Whisper write at most half of prompt + max_new_tokens (its whisper.cc, as
        # OpenAI's decoder does; CTranslate2 issue #1856): asked for 2N less the prompt, it writes N.
        prompt = 2  # <|startoftranscript|> <|notimestamps|>: an English-only vocabulary, no language token

        def decode(item):
            segments, _ = BatchedInferencePipeline(model).transcribe(
                item[1], batch_size=batch, beam_size=5, language="en", vad_filter=True, without_timestamps=True,
                max_new_tokens=2 * tokens - prompt, suppress_tokens=[eot], suppress_blank=False, temperature=0.0,
                compression_ratio_threshold=None, log_prob_threshold=None, no_speech_threshold=None)
            segments = list(segments)
            return len(segments), sum(len(s.tokens) for s in segments)

        decode(files[0])  # warm-up
        done, wall = run_threads(workers, items, decode)
    weights = (folder / "model.bin").stat().st_size
    audio_s = sum(len(item[1]) for item in items) / 16000
    free = memory.free_at_start()
    return {"fits_by_vram_check": workers_that_fit(free, weights, batch) if free else None, "stage": "shaped", "model": f"{shape} shape, random weights, {tokens} tokens per window", "workers": workers,
            "batch": batch, "compute_type": compute, "audio_s": round(audio_s, 1), "x_realtime": round(audio_s / wall, 1),
            "windows": sum(n for n, _ in done), "tokens_decoded": sum(t for _, t in done), "peak_gib": memory.gib(),
            "predicted_gib": round((weights + workers * worker_bytes(weights, batch)) / 2**30, 2)}


# -- the whole proof ----------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", required=True)
    parser.add_argument("--out", help="folder for gpu-proof.json (required)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="a small random model, few configurations (the CPU test)")
    parser.add_argument("--budget-s", type=float, default=480, help="no stage starts after this (the call's limit)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kit = Path(args.kit).resolve()
    if args.stage:  # a child: one stage, its JSON on the last line
        stages = {"facts": facts, "real": stage_real, "build": stage_build, "shaped": stage_shaped}
        print(json.dumps(stages[args.stage](kit, device=args.device, **json.loads(args.args))))
        return 0

    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device, "rows": []}

    def keep(row: dict) -> dict:
        report["rows"].append(row)
        (out / "gpu-proof.json").write_text(json.dumps(report, indent=1) + "\n")
        say(json.dumps(row))
        return row

    site = install(kit)
    cublas = link_cublas(kit) if args.device == "cuda" else None
    join_weights(kit)
    env = child_env(kit, site)
    report["cublas"] = str(cublas) if cublas else None
    report["facts"] = in_child(env, "--kit", str(kit), "--device", args.device, "--stage", "facts", limit_s=120)
    say(f"host: {report['facts']}; libcublas.so.12 -> {cublas}")
    if args.device == "cuda" and not report["facts"].get("cuda_devices"):
        keep({"error": "CTranslate2 sees no CUDA device", "facts": report["facts"]})
        return 1
    tokens = json.loads((kit / "corpus" / "corpus.json").read_text())["tokens_per_window"]
    report["tokens_per_window"] = tokens

    started = time.monotonic()

    def stage(name: str, limit_s: float, **kwargs) -> dict:
        left = args.budget_s - (time.monotonic() - started)
        if left < 30:
            return keep({"stage": name, **kwargs, "error": f"skipped: the {args.budget_s:.0f}-s budget is spent"})
        limit_s = min(limit_s, left)
        row = in_child(env, "--kit", str(kit), "--device", args.device, "--stage", name, "--args", json.dumps(kwargs),
                       limit_s=limit_s)
        return keep({"stage": name, **kwargs, **row})

    for decoding in ("plain", "engine", "engine+speakers", *(() if args.small else ("engine at beam 5",))):
        for workers in ((1,) if args.small else (1, 4)):
            stage("real", 240, decoding=decoding, workers=workers)
    shape = "small-random" if args.small else "large-v3-turbo"
    built = stage("build", 300, shape=shape)
    if "error" in built:
        return 1
    for batch in ((2, 4) if args.small else (8, 16, 32)):
        for workers in ((1, 2) if args.small else (1, 2, 4, 8)):
            row = stage("shaped", 240, shape=shape, workers=workers, batch=batch, tokens=tokens)
            if "out of memory" in row.get("error", ""):
                break  # more workers at this batch only need more
    # Where memory runs out: many workers at the largest batch, on one minute of each file.
    for workers in (() if args.small else (16, 32, 64)):
        row = stage("shaped", 150, shape=shape, workers=workers, batch=32, tokens=tokens, seconds=60)
        if "error" in row:
            break
    say(f"figures: {out / 'gpu-proof.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
