#!/usr/bin/env bash
# Debian packages the test suite needs beyond the venv: Debian's chromium for the browser tests
# (Playwright drives it; no browser is ever downloaded), PostgreSQL, and espeak-ng, which reads the texts of
# the other languages' recordings (benchmarks/spoken_languages.py). Idempotent: does nothing when present.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
# PostgreSQL for the search index's second engine (tests/pg_server.py starts a throwaway server).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# Fonts so the screenshot of the UI shows text rather than empty boxes.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: not root, not installing ${missing[*]} (the tests that need them skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
