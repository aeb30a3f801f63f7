"""Partition keys: short, stable and safe in file paths and URLs, one per source file.

Dagster does not validate dynamic partition keys, but a key ends up in paths and URLs:
`a/b.mp3` makes nested folders, long keys overflow file names, `...` is the range separator.
"""

from __future__ import annotations

import hashlib
import re

MAX_KEY_LENGTH = 80
HASH_CHARS = 16  # 64 bits: at 100,000 unsafe names a 32-bit hash collides with near certainty
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def is_safe_key(key: str) -> bool:
    return (
        bool(_SAFE.fullmatch(key))
        and ".." not in key
        and not key.startswith(("-", "."))
        and len(key) <= MAX_KEY_LENGTH
    )


def key_for_path(relative_path: str) -> str:
    """`talk.mp3` stays `talk.mp3`; anything else gets a readable stem and a hash of the path.

    The hash keeps two paths that clean up to the same stem (`a b.mp3`, `a_b.mp3`, `x/a.mp3`,
    and on S3 `//a.mp3`) apart, and makes the key a pure function of the path: the same file
    always gets the same key. Names that are not valid UTF-8 (from SMB shares, old zips) arrive
    from Python with their raw bytes as surrogates and hash by those bytes.
    """
    if is_safe_key(relative_path):
        return relative_path
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", relative_path.strip("/").replace("/", "__"))
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")[: MAX_KEY_LENGTH - HASH_CHARS - 1] or "file"
    digest = hashlib.sha1(relative_path.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_CHARS]
    return f"{stem}-{digest}"


def storage_name(key: str) -> str:
    """The file-name stem for a key's outputs; a hand-typed unsafe key is made safe the same way."""
    return key if is_safe_key(key) else key_for_path(key)


def key_path(folder: str, key: str, suffix: str = ".json") -> str:
    """Where a key's output lives in storage: `transcripts/<key>.json`, `subtitles/<key>.srt`..."""
    return f"{folder}/{storage_name(key)}{suffix}"
