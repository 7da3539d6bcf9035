"""The Weights & Biases Artifacts API (`init`, `Artifact`, `Run`, `Api`) on the artfs core.

The contract the tests hold it to (README.md's tour shows it in use):
- `run.log_artifact` commits the next version `v<N+1>` unless the artifact's digest (paths,
  entry digests, references' checksums) equals an existing version's, in which case only the
  aliases move there; `latest` is always among them.
- Logs run in the background but are numbered in call order within a run; `run.finish()` (or
  leaving its `with` block) and `artifact.wait()` wait for them. Two processes logging at once
  get distinct versions: the registry's commit protocol (`artfs/registry.py`) decides.
- `add_file`/`add_dir`/`add_reference` name entries as W&B does (`tests/test_naming_table.py`);
  a reference keeps its URI and checksum, and a download verifies it against them.
"""

from artfs.errors import ArtfsError

from .api import Api
from .artifact import Artifact, ArtifactStateError, Entry
from .run import Run, RunFinishedError, init

__all__ = [
    "Api", "Artifact", "ArtifactStateError", "ArtfsError", "Entry", "Run", "RunFinishedError",
    "init",
]
