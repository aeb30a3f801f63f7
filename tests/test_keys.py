"""Partition keys: the same path always gives the same short, safe key, and two paths never share one.

A key lands in Dagster URLs, storage paths (`transcripts/<key>.json`) and partition ranges
(`a...b`), so each property below guards a failure seen with raw file names.
"""

from __future__ import annotations

import random
import re

import pytest

from opentr_pipeline.intake.keys import MAX_KEY_LENGTH, is_safe_key, key_for_path, storage_name

SAFE = re.compile(r"[A-Za-z0-9._-]+")


def assert_safe(key: str) -> None:
    assert SAFE.fullmatch(key), key
    assert ".." not in key, key
    assert len(key) <= MAX_KEY_LENGTH <= 80, key
    assert not key.startswith(("-", ".")), key  # not an option to a shell tool, not a hidden file
    assert is_safe_key(key)


def test_plain_names_stay_as_they_are() -> None:
    for name in ["talk.mp3", "Meeting_2024-05-01.m4a", "a.b.c.wav", "x__a.mp3"]:
        assert key_for_path(name) == name


def test_keys_are_pinned_across_releases() -> None:
    """Keys are stored in the Dagster instance: changing the recipe would orphan every partition.

    (Changed once, on purpose: the hash went from 32 to 64 bits, since 100,000 unsafe names
    under a 32-bit hash collide with near certainty.)"""
    assert key_for_path("a b.mp3") == "a_b.mp3-682f2edab77f9815"
    assert key_for_path("x/a.mp3") == "x__a.mp3-47fd5592111729cf"
    assert key_for_path("../../etc/passwd") == "etc__passwd-936d7c04cd83ef94"


@pytest.mark.parametrize(
    "path",
    [
        "a b.mp3", "x/a.mp3", "deep/er/still/talk.wav", "a...b.mp3", "..", "...", "",
        ".hidden.mp3", "-rf.mp3", "../../etc/passwd", "réunion été.mp3", "会议.mp3",
        "tab\there.mp3", "new\nline.mp3", "100% sure?.mp3", "C:\\Users\\me\\talk.mp3",
    ],
)
def test_unsafe_paths_become_safe_stable_keys(path: str) -> None:
    key = key_for_path(path)
    assert_safe(key)
    assert key == key_for_path(path)


def test_paths_that_clean_up_alike_stay_apart() -> None:
    pairs = [
        ("a b.mp3", "a_b.mp3"),
        ("x/a.mp3", "x__a.mp3"),
        ("a b.mp3", "a?b.mp3"),
        ("x/a.mp3", "x a.mp3"),
        ("a...b.mp3", "a.b.mp3"),
        ("réunion.mp3", "r?union.mp3"),
    ]
    for left, right in pairs:
        assert key_for_path(left) != key_for_path(right), (left, right)


def test_readable_stem_survives() -> None:
    """A person scanning the Dagster UI should still recognise the file."""
    assert key_for_path("team calls/monday standup.mp3").startswith("team_calls__monday_standup.mp3-")


def test_long_paths_stay_short_and_distinct() -> None:
    base = "recordings/" + "very long folder name/" * 12
    first = key_for_path(base + "part one.mp3")
    second = key_for_path(base + "part two.mp3")
    assert len(base + "part one.mp3") >= 280
    assert_safe(first)
    assert_safe(second)
    assert first != second  # the cut-off stems match; the hash of the whole path does not

    long_safe_name = "a" * 296 + ".mp3"  # only safe characters, but far too long for a file name
    assert len(long_safe_name) == 300
    assert_safe(key_for_path(long_safe_name))


def test_a_doubled_slash_is_another_object() -> None:
    """On S3 `uploads//a.mp3` and `uploads/a.mp3` are two objects: listed under `uploads`, their
    relative paths are `/a.mp3` and `a.mp3`, and they must not share a partition."""
    assert key_for_path("a.mp3") == "a.mp3"
    assert key_for_path("/a.mp3") != "a.mp3"
    assert key_for_path("/a.mp3").startswith("a.mp3-")


def test_names_that_are_not_utf8_get_keys_by_their_bytes() -> None:
    """Python hands undecodable bytes of a file name over as surrogates (os.fsdecode)."""
    import os

    latin1, other = os.fsdecode(b"caf\xe9.wav"), os.fsdecode(b"caf\xe8.wav")
    assert_safe(key_for_path(latin1))
    assert key_for_path(latin1) != key_for_path(other)
    assert key_for_path(latin1) == key_for_path(os.fsdecode(b"caf\xe9.wav"))


def test_many_generated_names_give_safe_unique_stable_keys() -> None:
    """A property check without hypothesis: a seeded generator over awkward characters."""
    alphabet = "abcXYZ019 ._-/?*:é会\t'\"#%&()[]~"
    generator = random.Random(20240501)
    names = set()
    while len(names) < 5000:
        length = generator.choice([1, 2, 5, 12, 40, 90, 200, 300])
        name = "".join(generator.choice(alphabet) for _ in range(length)).strip("/")
        if name:
            names.add(name)
    keys: dict[str, str] = {}
    for name in names:
        key = key_for_path(name)
        assert_safe(key)
        assert key_for_path(name) == key
        assert key not in keys, f"{name!r} and {keys[key]!r} share the key {key!r}"
        keys[key] = name


@pytest.mark.parametrize(
    "typed", ["My Talk.mp3", "a/b.mp3", "a...b", "../secret", " ", "x" * 200, ".env", "-"]
)
def test_storage_name_makes_hand_typed_keys_safe(typed: str) -> None:
    name = storage_name(typed)
    assert_safe(name)
    assert storage_name(name) == name  # idempotent: a stored name maps to itself


def test_storage_name_keeps_safe_keys() -> None:
    for path in ["talk.mp3", "a b.mp3", "x/a.mp3", "y" * 300]:
        key = key_for_path(path)
        assert storage_name(key) == key
