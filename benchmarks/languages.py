"""Every language heard, at what cost: tiny.en alone, the multilingual model alone, and the default
(each chunk's language detected, English to tiny.en, the rest to bundled-base), side by side in
one run on the same recordings.

    python benchmarks/languages.py --seconds 60 --per-language 2

Per language: the share of files whose language was detected right, WER (after a normalisation
that keeps every alphabet) and x realtime (the engine's own timing, models loaded first). The
recordings that change language mid-way add the share of their speech put in the right language.
The English rows' speed ratio (default over tiny.en alone) is the cost of the detection.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import conversation, fixtures_folder, speech_clips  # noqa: E402
from spoken_languages import TEXTS, Spoken, error_rate, one_language, speech_share_right, switching  # noqa: E402

SAMPLE_RATE = 16000
TINY_ALONE, BASE_ALONE, DEFAULT = "tiny.en alone", "bundled-base alone", "default (detect, route)"
CONFIGURATIONS = {
    TINY_ALONE: {"WHISPER_MULTILINGUAL_MODEL": "off"},
    BASE_ALONE: {"WHISPER_MODEL": "bundled-base"},
    DEFAULT: {},
}


@dataclass
class Heard:
    config: str
    spoken: Spoken
    language: str
    text: str
    wall_s: float
    right_share: float


def build(seconds: float, per_language: int, languages: list[str]) -> list[Spoken]:
    clips = [c for c in speech_clips(fixtures_folder()) if not c.name.startswith("demo")]
    english = []
    for index in range(per_language):
        samples, text = conversation(clips, index, seconds, seed=7)
        english.append(Spoken(f"en-{index}", samples, text, "en", [(0.0, len(samples) / SAMPLE_RATE, "en")]))
    spoken = english + [one_language(lang, seconds, variant) for lang in languages for variant in range(per_language)]
    jfk = next(c for c in clips if "jfk" in c.name)
    quilter = next(c for c in clips if "quilter" in c.name)
    spoken += [switching([(jfk.samples, jfk.reference), (quilter.samples, quilter.reference)], lang, seconds)
               for lang in languages[:2]]
    return spoken


def run(spoken: list[Spoken], threads: int, device=None) -> list[Heard]:
    """Each configuration over every recording, one worker (`device`: a DevicePlan; default the CPU)."""
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import DecodedAudio, TranscriptionOptions, transcribe_on
    from opentr_pipeline.settings import Settings

    device = device or DevicePlan("cpu", 0, 1, threads)
    heard = []
    for config, env in CONFIGURATIONS.items():
        decoding = Settings.from_env({"OPENTR_DIARIZATION": "off", **env}).decoding
        options = TranscriptionOptions.from_settings(decoding, device)
        transcribe_on(decoding, device, 0, DecodedAudio(spoken[0].samples[: 5 * SAMPLE_RATE], ""), options)  # models loaded
        for item in spoken:
            done = transcribe_on(decoding, device, 0, DecodedAudio(item.samples, ""), options).to_dict()
            heard.append(Heard(config, item, done["language"], done["text"], done["wall_s"],
                               speech_share_right(item.stretches, done["segments"])))
            print(f"  {config:<24} {item.name:<12} {done['language']:<3} {done['wall_s']:6.2f} s  {done['text'][:70]!r}",
                  file=sys.stderr)
    return heard


def rows(heard: list[Heard]) -> list[dict]:
    """Per language (or "switching") and configuration: files, language right, WER, x realtime."""
    groups: dict[tuple[str, str], list[Heard]] = {}
    for h in heard:
        groups.setdefault(("switching" if len(h.spoken.stretches) > 1 else h.spoken.language, h.config), []).append(h)
    found = []
    for (language, config), items in sorted(groups.items(), key=lambda kv: (kv[0][0] != "en", kv[0][0] == "switching",
                                                                             kv[0][0], list(CONFIGURATIONS).index(kv[0][1]))):
        audio, wall = sum(h.spoken.duration_s for h in items), sum(h.wall_s for h in items)
        words = sum(len(h.spoken.reference.split()) for h in items)
        found.append({
            "language": language, "configuration": config, "files": len(items),
            "language_right": (sum(h.right_share for h in items) / len(items) if language == "switching"
                               else sum(h.language == h.spoken.language for h in items) / len(items)),
            "wer": sum(error_rate(h.spoken.reference, h.text) * len(h.spoken.reference.split()) for h in items) / words,
            "x_realtime": audio / wall if wall else 0.0,
        })
    return found


def english_ratio(found: list[dict]) -> float:
    """The default's English throughput over tiny.en alone's: what detecting languages costs English."""
    speed = {(r["language"], r["configuration"]): r["x_realtime"] for r in found}
    return speed.get(("en", DEFAULT), 0.0) / max(speed.get(("en", TINY_ALONE), 0.0), 1e-9)


def table(found: list[dict]) -> str:
    lines = ["| language | decoded by | files | language right | WER | x realtime |", "|---|---|---|---|---|---|"]
    for r in found:
        right = (f"{r['language_right']:.2f} of speech" if r["language"] == "switching"
                 else f"{round(r['language_right'] * r['files'])}/{r['files']}")
        lines.append(f"| {r['language']} | {r['configuration']} | {r['files']} | {right} | {r['wer']:.3f} | {r['x_realtime']:.1f} |")
    lines += ["", f"English, default over tiny.en alone: {english_ratio(found):.2f} of its throughput (target at least 0.9)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each recording")
    parser.add_argument("--per-language", type=int, default=2)
    parser.add_argument("--languages", default=",".join(TEXTS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    started = time.perf_counter()
    spoken = build(args.seconds, args.per_language, [] if args.languages in ("", "none") else args.languages.split(","))
    print(f"{len(spoken)} recordings, {sum(s.duration_s for s in spoken) / 60:.1f} min, built in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table(rows(run(spoken, args.threads))))


if __name__ == "__main__":
    main()
