"""One judgement of a file's failure, shared by the run process and the resident worker."""

from __future__ import annotations

from dataclasses import dataclass

from opentr_pipeline.engine.media import MediaError
from opentr_pipeline.storage import SourceError


@dataclass(frozen=True)
class FileFailure:
    reason: str  # names the file
    permanent: bool  # bad input: running it again cannot help


def failure_of(error: Exception, name: str) -> FileFailure:
    """A reason that names the file, whatever raised it; bad media and foreign sources are final."""
    message = str(error) or type(error).__name__
    return FileFailure(message if name in message else f"{name}: {message}",
                       permanent=isinstance(error, (MediaError, SourceError, FileNotFoundError)))
