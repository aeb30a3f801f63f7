#!/usr/bin/env bash
# make_demo_media.sh - regenerate the demo/test clips in resources/demo_media/.
#
# Synthesises four short English clips (two Harvard sentences each, ~7 s)
# with espeak-ng and stores them in different containers/codecs so the
# pipeline's format handling is exercised end to end:
#   harvard_01.ogg   Ogg Vorbis (quality 3), 16 kHz mono    (sox)
#   harvard_02.mp3   MP3 (LAME) 48 kbit/s, 16 kHz mono      (PyAV)
#   harvard_03.flac  FLAC, 16 kHz mono, 8-bit samples       (sox; 8-bit keeps it small)
#   harvard_04.m4a   AAC-LC in MP4, 48 kbit/s, 16 kHz mono  (PyAV)
# plus texts.json, mapping each file name to the exact text spoken (tests
# compare transcripts against it with a word-error-rate threshold).
#
# The Harvard sentences (IEEE Recommended Practice for Speech Quality
# Measurements, 1969) are public domain, and the audio is synthetic, so the
# clips can be committed freely.
#
# Deterministic and re-runnable: outputs are overwritten; sox runs in
# repeatable mode (-R) without dither, PyAV muxes/encodes bit-exact.
# Needs: espeak-ng, sox (apt-get install espeak-ng sox) and a Python with
# PyAV (${PYTHON:-.venv/bin/python}, relative to the repository root).
set -euo pipefail

command -v espeak-ng >/dev/null || { echo "install espeak-ng: apt-get install espeak-ng sox" >&2; exit 1; }
command -v sox >/dev/null || { echo "install sox: apt-get install espeak-ng sox" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -c 'import av' 2>/dev/null || { echo "need PyAV: $PYTHON -c 'import av' failed (set PYTHON=...)" >&2; exit 1; }

OUT="resources/demo_media"
# Voice settings tuned so that Whisper tiny.en transcribes the clips well:
# espeak's run-together words confuse it, a 60 ms gap between words brings
# the word error rate down a lot. The sentences (and which codec each one
# gets) are the ones tiny.en recognised word for word in that setting; lower
# lossy bitrates than these cost it words.
VOICE="en-us"
SPEED=150   # words per minute
GAP=6       # extra pause between words, in units of 10 ms
RATE=16000

mkdir -p "$OUT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

NAMES=(harvard_01.ogg harvard_02.mp3 harvard_03.flac harvard_04.m4a)
TEXTS=(   # Harvard lists 1 and 2
  "The juice of lemons makes fine punch. The box was thrown beside the parked truck."
  "The hogs were fed chopped corn and garbage. Four hours of steady work faced us."
  "Rice is often served in round bowls. Large size in stockings is hard to sell."
  "Help the woman get back to her feet. The salt breeze came across from the sea."
)

# Encode a 16 kHz mono WAV with PyAV: pyav_encode IN OUT CODEC BITRATE
pyav_encode() {
  "$PYTHON" - "$@" <<'PY'
import sys
import av

src, dst, codec, bitrate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with av.open(src) as inp, av.open(dst, "w", options={"fflags": "+bitexact"}) as out:
    ost = out.add_stream(codec, rate=16000, layout="mono", options={"flags": "+bitexact"})
    ost.bit_rate = bitrate
    for frame in inp.decode(audio=0):
        frame.pts = None
        out.mux(ost.encode(frame))
    out.mux(ost.encode(None))
PY
}

for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  wav="$TMP/$i.wav"
  espeak-ng -v "$VOICE" -s "$SPEED" -g "$GAP" -w "$TMP/$i.raw.wav" "${TEXTS[$i]}"
  # 3 dB headroom (resampling would clip a few peaks), 16 kHz mono 16-bit, no dither
  sox -R -D "$TMP/$i.raw.wav" -r "$RATE" -c 1 -b 16 "$wav" gain -3
  rm -f "$OUT/$name"
  case "$name" in
    *.ogg)  sox -R -D "$wav" --comment "" -C 3 "$OUT/$name" ;;
    *.flac) sox -R -D "$wav" --comment "" -b 8 -C 8 "$OUT/$name" ;;
    *.mp3)  pyav_encode "$wav" "$OUT/$name" libmp3lame 48000 ;;
    *.m4a)  pyav_encode "$wav" "$OUT/$name" aac 48000 ;;
    *) echo "no encoder for $name" >&2; exit 1 ;;
  esac
done

# texts.json: file name -> exact text spoken (texts contain no quotes/backslashes)
{
  echo "{"
  for i in "${!NAMES[@]}"; do
    sep=","; [ "$i" -eq $((${#NAMES[@]} - 1)) ] && sep=""
    printf '  "%s": "%s"%s\n' "${NAMES[$i]}" "${TEXTS[$i]}" "$sep"
  done
  echo "}"
} > "$OUT/texts.json"

ls -l "$OUT"
