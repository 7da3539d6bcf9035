"""The Weights & Biases Artifacts API on the artfs core (see SPEC §2)."""

from artfs.errors import ArtfsError

from .api import Api
from .artifact import Artifact, ArtifactStateError, Entry
from .run import Run, RunFinishedError, init

__all__ = [
    "Api", "Artifact", "ArtifactStateError", "ArtfsError", "Entry", "Run", "RunFinishedError",
    "init",
]
