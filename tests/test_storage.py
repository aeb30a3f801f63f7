"""Local storage as other programs see it: modes, and a file's version through a rewrite."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    """Issue 16, item 13: outputs were 0600 whatever the umask (mkstemp's mode), so another
    service account (a web server, an indexer) could not read the transcripts."""
    import subprocess
    import sys

    script = (f"import os; os.umask({umask}); from opentr_pipeline.storage import Storage; "
              f"print(Storage({str(tmp_path)!r}).write_text('transcripts/a.json', '{{}}'))")
    written = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(written).stat().st_mode & 0o777 == mode


def test_a_rewrite_is_a_new_version_though_size_and_mtime_are_put_back(tmp_path):
    """Issue 16, item 2: `cp other.wav a.wav; touch -r` kept size and mtime, and the rewrite went
    unseen. The version carries the inode's status-change time, which no tool sets back."""
    from opentr_pipeline.intake.uploads import same_version, scan_uploads
    from opentr_pipeline.storage import Storage

    upload = tmp_path / "uploads" / "a.wav"
    upload.parent.mkdir()
    upload.write_bytes(b"R" * 1000)
    (tmp_path / "other.wav").write_bytes(b"S" * 1000)
    listed = scan_uploads(str(upload.parent)).uploads[0]
    assert listed.version == Storage(str(tmp_path)).version_of(str(upload))
    before = upload.stat()
    time.sleep(0.05)  # ctime may tick coarsely (a jiffy); a real replacement comes seconds later
    shutil.copyfile(tmp_path / "other.wav", upload)
    os.utime(upload, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = scan_uploads(str(upload.parent)).uploads[0]
    assert again.version[:2] == listed.version[:2] and not same_version(listed.version, again)
    assert same_version(again.version, again)
    assert same_version(listed.version[:2], again)  # a version stored before the change token: size and mtime


def test_a_transcript_is_recorded_only_for_the_bytes_the_file_still_has(tmp_path):
    """Issue 16, item 1: a file that moves while it is transcribed (a copy still going on, a
    replacement) gets no transcript for the bytes read before: the version the probe recorded
    is compared with the file's version once the transcription is done."""
    from types import SimpleNamespace

    from opentr_pipeline.defs.assets.transcripts import TranscriptRecorder
    from opentr_pipeline.engine.transcription import SourceChanged
    from opentr_pipeline.storage import Storage

    store = Storage(str(tmp_path / "store"))
    source = tmp_path / "a.wav"
    source.write_bytes(b"x" * 100)
    probed = {"source_uri": str(source), "sha256": "abc", "source_version": store.version_of(str(source))}
    recorder = TranscriptRecorder(None, store, "v")
    result = SimpleNamespace(sha256="abc")
    assert recorder.still_the_probed_file(probed, result) is result
    with source.open("ab") as more:  # the copy went on after the bytes were read
        more.write(b"y" * 100)
    changed = recorder.still_the_probed_file(probed, result)
    assert isinstance(changed, SourceChanged) and str(source) in str(changed)
    assert isinstance(recorder.still_the_probed_file(probed, SimpleNamespace(sha256="def")), SourceChanged)
