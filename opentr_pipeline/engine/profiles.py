"""Voices known across files: every file's speakers grouped into voice profiles, so the same person
is one profile (and, once named, one name) in every recording.

Each file's speakers asset keeps one mean voice embedding per speaker (engine/speakers.py). Here
those are grouped across the library, agglomeratively on cosine distance with average linkage
(scipy: a library of 20,000 speakers is a 1.6-GB distance matrix; past that, match new speakers
to the profiles' centroids instead).
A profile's id is made from its earliest member (`file#SPEAKER_00`), so it stays while the
library grows around it; a name given to a member or to the profile's id names the whole profile.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# Average cosine distance under which two speakers are one voice. benchmarks/voice_profiles.py at
# seed 31: every voice in one profile and none merged from 0.3 to 0.45, two merged at 0.5; the
# middle of that range (README, "Voices across files").
PROFILE_DISTANCE = 0.4


@dataclass(frozen=True)
class HeardVoice:
    """One speaker of one file: `member` is "<partition key>#<speaker id>"."""

    member: str
    embedding: np.ndarray
    talk_s: float = 0.0
    model: str = ""  # the speaker model that heard it: another model's voices are not comparable

    @property
    def file(self) -> str:
        return self.member.rsplit("#", 1)[0]


@dataclass
class VoiceProfile:
    id: str
    members: list[str]
    talk_s: float
    name: str | None = None
    centroid: list[float] = field(default_factory=list)


def profile_id(members: list[str]) -> str:
    return "voice-" + hashlib.sha1(min(members).encode()).hexdigest()[:8]


def group_voices(heard: list[HeardVoice], distance: float = PROFILE_DISTANCE) -> list[list[int]]:
    """Indexes of `heard` grouped by voice: nearest groups joined first (average linkage on cosine
    distance) while closer than `distance`. Two speakers of one file may share a profile: a file
    that split one person in two is then mended here, while two people a file told apart are
    further apart than this (they were split at engine/speakers.py's looser MERGE_DISTANCE)."""
    if len(heard) < 2:
        return [[i] for i in range(len(heard))]
    from scipy.cluster.hierarchy import fcluster, linkage

    unit = np.stack([h.embedding / max(float(np.linalg.norm(h.embedding)), 1e-9) for h in heard]).astype(np.float64)
    labels = fcluster(linkage(unit, method="average", metric="cosine"), t=distance, criterion="distance")
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return list(groups.values())


def grouped_by_model(heard: list[HeardVoice], distance: float = PROFILE_DISTANCE) -> list[list[int]]:
    """group_voices within each speaker model (a library diarized by CAM++ and then by pyannote)."""
    groups = []
    for model in sorted({h.model for h in heard}):
        indexes = [i for i, h in enumerate(heard) if h.model == model]
        groups += [[indexes[j] for j in group] for group in group_voices([heard[i] for i in indexes], distance)]
    return groups


def build_profiles(heard: list[HeardVoice], names: dict[str, str] | None = None,
                   distance: float = PROFILE_DISTANCE) -> list[VoiceProfile]:
    """Profiles, most talk first; `names` maps a member or a profile id to a person's name (a
    name given to a member wins over one given to an id that has since changed)."""
    names = names or {}
    profiles = []
    for group in grouped_by_model(heard, distance):
        members = sorted(heard[i].member for i in group)
        ident = profile_id(members)
        named = next((names[m] for m in members if names.get(m)), None) or names.get(ident)
        centroid = np.mean([heard[i].embedding / max(float(np.linalg.norm(heard[i].embedding)), 1e-9) for i in group], axis=0)
        profiles.append(VoiceProfile(ident, members, round(sum(heard[i].talk_s for i in group), 3), named,
                                     [round(float(x), 5) for x in centroid]))
    return sorted(profiles, key=lambda p: (-p.talk_s, p.id))
