"""Voices known across files: the library's voice profiles, and the names people give them.

Built from every file's speakers record (one mean voice embedding per speaker) by
engine/profiles.py. A name is given once, to a profile's id or to any of its members
(`meeting.wav#SPEAKER_01`), in this asset's run config (Launchpad) or in `speaker_names.json`
under STORAGE_URI; every transcript record and subtitle of that voice then shows it, without
anything transcribed again.
"""

from dataclasses import asdict
from typing import Callable

import dagster as dg
import numpy as np

from opentr_pipeline.defs.assets.speakers import speakers, speakers_path
from opentr_pipeline.defs.assets.subtitles import write_subtitles
from opentr_pipeline.defs.resources import MediaStore
from opentr_pipeline.engine.profiles import HeardVoice, VoiceProfile, build_profiles
from opentr_pipeline.intake.keys import key_path

NAMES = "speaker_names.json"  # {"<file>#SPEAKER_00" or "voice-1a2b3c4d": "Maria Lopez"}
PROFILES = "voices/profiles.json"


class SpeakerNames(dg.Config):
    """Names to give, kept in speaker_names.json from then on: a profile id or a member
    ("<file>#SPEAKER_00") -> a person's name; an empty name takes one back."""

    names: dict[str, str] = {}


def read_names(store) -> dict[str, str]:
    found = store.read_json_or_none(NAMES) or {}
    return {str(k): str(v) for k, v in found.items() if isinstance(v, str) and v.strip()}


def name_files(store, records: list[dict], profiles: list[VoiceProfile], log,
               reindex: Callable[[dict], object] | None = None) -> list[str]:
    """Each file's transcript record, speakers record, subtitles and search entries, where its speakers' names or
    profiles changed (its speakers record, already read, says; the transcript is read only then);
    returns the files rewritten. One file that cannot be rewritten is named in the log and leaves
    the others done."""
    by_member = {member: profile for profile in profiles for member in profile.members}
    changed = []
    for record in records:
        key = record["partition_key"]
        try:
            now = [{**s, "name": by_member[m].name if (m := f"{key}#{s['id']}") in by_member else None,
                    "profile": by_member[m].id if m in by_member else None} for s in record["speakers"]]
            if now == record["speakers"]:
                continue
            doc = store.read_json_or_none(key_path("transcripts", key))
            if doc is None:
                continue
            doc = {**doc, "speakers": now}
            store.write_json(key_path("transcripts", key), doc)
            store.write_json(speakers_path(key), {**record, "speakers": now})
            write_subtitles(store, key, doc)
            if reindex is not None:  # a name searched for finds its turns at once
                reindex(doc)
            changed.append(key)
        except Exception as error:  # noqa: BLE001 - one file's fault is that file's
            log.warning(f"{key}: its speakers' names could not be written: {type(error).__name__}: {error}")
    return changed


@dg.asset(
    deps=[speakers],
    code_version="profiles-1",
    group_name="voices",
    kinds={"python"},
)
def voice_profiles(context: dg.AssetExecutionContext, config: SpeakerNames, media: MediaStore) -> dg.MaterializeResult:
    """The same voice across recordings as one profile, with the name a person gave it; the names
    are written into every transcript and subtitle of that voice."""
    store = media.outputs()
    names = read_names(store)
    if config.names:
        names = {k: v for k, v in {**names, **config.names}.items() if v.strip()}
        store.write_json(NAMES, names)
    records, skipped = store.list_records("speakers")
    for uri, reason in skipped.items():
        context.log.warning(f"{uri}: skipped, a damaged record: {reason}")
    heard = []
    for record in records:
        talk = {s["id"]: s.get("talk_s", 0.0) for s in record["speakers"]}
        heard += [HeardVoice(f"{record['partition_key']}#{who}", np.asarray(voice, np.float32), talk.get(who, 0.0),
                             record.get("model", ""))
                  for who, voice in record["voices"].items()]
    profiles = build_profiles(heard, names)
    store.write_json(PROFILES, {"profiles": [asdict(p) for p in profiles]})
    index = media.search()
    renamed = name_files(store, records, profiles, context.log, lambda doc: index.index(doc, media.upload_uri))
    table = "\n".join(["| voice | name | files | talk |", "|---|---|---|---|"] + [
        f"| {p.id} | {p.name or '(not named)'} | {len({m.rsplit('#', 1)[0] for m in p.members})} | {p.talk_s / 60:.1f} min |"
        for p in profiles[:50]])
    return dg.MaterializeResult(metadata={
        "profiles": len(profiles),
        "named": sum(1 for p in profiles if p.name),
        "speakers_heard": len(heard),
        "files_renamed": len(renamed),
        "voices": dg.MetadataValue.md(table + ("\n\n(the 50 with most talk)" if len(profiles) > 50 else "")),
        "names_file": dg.MetadataValue.path(store.uri(NAMES)),
        "profiles_file": dg.MetadataValue.path(store.uri(PROFILES)),
    })
