"""Untrusted media is decoded in a child process: a crash, a stall or a runaway allocation costs
that file, named, and the caller and the next file carry on (engine/isolation.py).

The crashes here are real signals delivered to the real decoder process mid-decode; the
8-channel WAV is the recording that made PyAV's planar resampler segfault."""

from __future__ import annotations

import os
import signal
import struct
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from opentr_pipeline.engine import isolation
from opentr_pipeline.engine.isolation import DecodeLimits, decode_windows_isolated, probe_isolated
from opentr_pipeline.engine.media import MediaError
from opentr_pipeline.engine.transcription import load_audio


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """int16 PCM; `samples` is (frames,) or (frames, channels)."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.clip(frames * 32767, -32768, 32767).astype("<i2").tobytes())
    return path


def multichannel_speech(fixtures_dir: Path, channels: int) -> np.ndarray:
    """The JFK clip on every channel at its own gain, as a multitrack recorder writes it."""
    mono = load_audio(fixtures_dir / "jfk.flac").samples
    gains = np.linspace(0.3, 1.0, channels, dtype=np.float32)
    return (mono[:, None] * gains[None, :]).astype(np.float32)


def decoder_children() -> list[int]:
    server = isolation._SERVER.process
    assert server is not None and server.poll() is None
    text = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
    return [int(pid) for pid in text.split()]


def no_children_left(timeout_s: float = 5) -> bool:
    """The server reaps a finished child within a poll (20 ms); give it a moment."""
    deadline = time.monotonic() + timeout_s
    while decoder_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not decoder_children()


def long_wav(tmp_path: Path, seconds: int = 600) -> Path:
    rng = np.random.default_rng(1)
    return write_wav(tmp_path / "long.wav", (rng.standard_normal(seconds * 16000) * 0.1).astype(np.float32))


@pytest.mark.parametrize("channels", [8, 9, 16, 64])
def test_recordings_of_8_to_64_channels_are_decoded_to_their_speech(fixtures_dir, tmp_path, channels):
    path = write_wav(tmp_path / f"multitrack-{channels}.wav", multichannel_speech(fixtures_dir, channels))
    mono = load_audio(fixtures_dir / "jfk.flac").samples
    decoded = load_audio(path).samples
    assert abs(len(decoded) - len(mono)) <= 160
    # The mix of gains 0.3 .. 1.0 is the clip at their mean gain, sample for sample.
    size = min(len(decoded), len(mono))
    correlation = np.corrcoef(decoded[:size], mono[:size])[0, 1]
    assert correlation > 0.99


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS])
def test_a_decoder_that_crashes_mid_file_fails_that_file_named_and_the_next_file_decodes(
        fixtures_dir, tmp_path, signum):
    path = long_wav(tmp_path)
    with open(path, "rb") as handle:
        windows = decode_windows_isolated(handle, "uploads/long.wav", 16000, 16000 * 30)
        next(windows)
        children = decoder_children()
        assert len(children) == 1
        os.kill(children[0], signum)
        with pytest.raises(MediaError) as failed:
            for _ in windows:
                pass
    name = signal.Signals(signum).name
    assert str(failed.value).startswith(f"uploads/long.wav: the decoder crashed on it: signal {int(signum)} ({name}); "
                                        "its peak memory ")
    assert load_audio(fixtures_dir / "jfk.flac").samples.size > 0  # same server, same caller
    assert no_children_left()


def test_a_decoder_killed_from_outside_is_no_verdict_on_the_file(tmp_path):
    path = long_wav(tmp_path)
    with open(path, "rb") as handle:
        windows = decode_windows_isolated(handle, "long.wav", 16000, 16000 * 30)
        next(windows)
        os.kill(decoder_children()[0], signal.SIGKILL)
        with pytest.raises(RuntimeError) as failed:
            list(windows)
    assert not isinstance(failed.value, MediaError)  # transient: tried again on the next attempt
    assert "killed from outside" in str(failed.value)


def test_a_decoder_that_stops_making_progress_is_stopped_and_the_file_named(tmp_path):
    path = long_wav(tmp_path)
    with open(path, "rb") as handle:
        windows = decode_windows_isolated(handle, "long.wav", 16000, 16000 * 30, DecodeLimits(stall_s=1.5))
        next(windows)
        child = decoder_children()[0]
        os.kill(child, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(MediaError, match=r"^long.wav: the decoder made no progress for 2 s"):
            list(windows)
    assert time.monotonic() - started < 10
    assert no_children_left()


def test_a_decoder_over_its_memory_limit_fails_the_file_with_the_setting_named(tmp_path):
    path = long_wav(tmp_path)  # 10 minutes in one window: 38 MB of samples, more while decoding
    with open(path, "rb") as handle, pytest.raises(MediaError) as failed:
        list(decode_windows_isolated(handle, "long.wav", 16000, None, DecodeLimits(memory_mb=64)))
    assert "long.wav" in str(failed.value)
    # A clean MemoryError, or native code crashing on a failed allocation: either way the limit is named.
    assert "64 MiB" in str(failed.value) and "OPENTR_DECODE_MEMORY_MB" in str(failed.value)
    with open(path, "rb") as handle:  # the same file within the default limit
        assert sum(w.samples.size for w in decode_windows_isolated(handle, "long.wav", 16000, None)) == 600 * 16000


def test_probe_in_the_child_names_the_file_and_the_server_survives_bad_bytes(fixtures_dir, tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MediaError, match="junk.mp3"):
        probe_isolated(junk)
    assert probe_isolated(fixtures_dir / "jfk.flac").duration_s == pytest.approx(11.0, abs=0.1)


def test_the_child_decodes_the_bytes_the_caller_hashed_though_the_name_was_replaced(fixtures_dir, tmp_path):
    """The open file goes to the child, not its name: a rename over it changes nothing here."""
    path = write_wav(tmp_path / "talk.wav", load_audio(fixtures_dir / "jfk.flac").samples)
    other = write_wav(tmp_path / "other.wav", np.zeros(16000, np.float32))
    with open(path, "rb") as handle:
        os.replace(other, path)
        decoded = [w.samples for w in decode_windows_isolated(handle, "talk.wav", 16000, None)]
    assert decoded[0].size > 10 * 16000


def test_a_wav_with_a_channel_count_ffmpeg_refuses_is_named_not_fatal(tmp_path):
    """A header claiming 0 channels: FFmpeg refuses it, the child says so, the caller carries on."""
    data = np.zeros(16000, "<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " +
              struct.pack("<IHHIIHH", 16, 1, 0, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", len(data)))
    path = tmp_path / "zero.wav"
    path.write_bytes(header + data)
    with pytest.raises(MediaError, match="zero.wav"):
        load_audio(path)
