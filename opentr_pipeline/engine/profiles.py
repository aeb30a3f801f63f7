"""Voices known across files: every file's speakers grouped into voice profiles, so the same person
is one profile (and, once named, one name) in every recording.

Each file's speakers asset keeps one mean voice embedding per speaker (engine/speakers.py). Here
those are grouped across the library, agglomeratively on cosine distance with average linkage,
two speakers of one file never in one profile (they were told apart where both were heard).
A profile's id is made from its earliest member (`file#SPEAKER_00`), so it stays while the
library grows around it; a name given to a member or to the profile's id names the whole profile.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# Average cosine distance under which two speakers are one voice: between the threshold that
# splits one voice across recordings and the one that merges two (README, "Voices across files").
PROFILE_DISTANCE = 0.45


@dataclass(frozen=True)
class HeardVoice:
    """One speaker of one file: `member` is "<partition key>#<speaker id>"."""

    member: str
    embedding: np.ndarray
    talk_s: float = 0.0

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
    """Indexes of `heard` grouped by voice: nearest groups joined first (average linkage) while
    closer than `distance`, never two speakers of one file in one group."""
    groups: list[list[int]] = [[i] for i in range(len(heard))]
    if len(heard) < 2:
        return groups
    unit = np.stack([h.embedding / max(float(np.linalg.norm(h.embedding)), 1e-9) for h in heard])
    pair = 1.0 - unit @ unit.T  # cosine distance between every two speakers
    files = [{heard[i].file} for i in range(len(heard))]
    alive = list(range(len(groups)))
    between = pair.copy()  # average distance between live groups
    file_ids = np.array([hash(h.file) for h in heard])
    between[file_ids[:, None] == file_ids[None, :]] = np.inf  # the diagonal too
    while len(alive) > 1:
        sub = between[np.ix_(alive, alive)]
        flat = int(np.argmin(sub))
        i, j = alive[flat // len(alive)], alive[flat % len(alive)]
        if not sub.flat[flat] < distance:
            break
        size_i, size_j = len(groups[i]), len(groups[j])
        merged = (between[i] * size_i + between[j] * size_j) / (size_i + size_j)
        groups[i] += groups[j]
        files[i] |= files[j]
        alive.remove(j)
        between[i], between[:, i] = merged, merged
        between[j], between[:, j] = np.inf, np.inf
        between[i, i] = np.inf
        for k in alive:  # a group may not take a second speaker of any file it holds
            if k != i and files[k] & files[i]:
                between[i, k] = between[k, i] = np.inf
    return [sorted(groups[i]) for i in alive]


def build_profiles(heard: list[HeardVoice], names: dict[str, str] | None = None,
                   distance: float = PROFILE_DISTANCE) -> list[VoiceProfile]:
    """Profiles, most talk first; `names` maps a member or a profile id to a person's name (a
    name given to a member wins over one given to an id that has since changed)."""
    names = names or {}
    profiles = []
    for group in group_voices(heard, distance):
        members = sorted(heard[i].member for i in group)
        ident = profile_id(members)
        named = next((names[m] for m in members if names.get(m)), None) or names.get(ident)
        centroid = np.mean([heard[i].embedding / max(float(np.linalg.norm(heard[i].embedding)), 1e-9) for i in group], axis=0)
        profiles.append(VoiceProfile(ident, members, round(sum(heard[i].talk_s for i in group), 3), named,
                                     [round(float(x), 5) for x in centroid]))
    return sorted(profiles, key=lambda p: (-p.talk_s, p.id))
