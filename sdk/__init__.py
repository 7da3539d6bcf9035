"""The Weights & Biases Artifacts API (`init`, `Artifact`, `Run`, `Api`) on the artfs core:
a W&B Artifacts script runs after `import sdk as wandb`.

The contract the tests hold it to (README.md's tour shows it in use):
- `run.log_artifact` commits the next version `v<N+1>` unless the artifact's digest (paths,
  entry digests, references' checksums) equals an existing version's, in which case only the
  aliases move there; `latest` is always among them.
- Logs run in the background but are numbered in call order within a run; `run.finish()` (or
  leaving its `with` block) and `artifact.wait()` wait for them. Two processes logging at once
  get distinct versions: the registry's commit protocol (`artfs/registry.py`) decides.
- `add_file`/`add_dir` log the bytes a file holds at the call (W&B's `policy="mutable"`,
  `tests/test_sdk_capture.py`); `policy="immutable"` reads it at upload and fails if it changed.
- `add_file`/`add_dir`/`add_reference` name entries as W&B does (`tests/test_naming_table.py`);
  a reference keeps its URI and checksum, and a download verifies it against them.
- Names, listing and filters as W&B's (`tests/test_sdk_listing.py`); what W&B does beyond
  artifacts (`run.log`, summaries) raises NotImplementedError saying so.
"""

from typing import Any

from artfs.errors import ArtfsError

from . import session
from .api import Api, ArtifactCollection, Artifacts, ArtifactType
from .artifact import Artifact, ArtifactStateError, Entry
from .wandb_run import Config, Run, RunExistsError, RunFinishedError, init

__all__ = [
    "Api", "Artifact", "ArtifactCollection", "ArtifactStateError", "ArtifactType", "Artifacts",
    "ArtfsError", "Config", "Entry", "Run", "RunExistsError", "RunFinishedError", "init",
    "finish", "log_artifact", "use_artifact",
]


def __getattr__(name: str) -> Any:
    """`wandb.run`: the active run, or None."""
    if name == "run":
        return session.current_run()
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")


def _active() -> Run:
    run = session.current_run()
    if run is None:
        raise ArtfsError("no active run: call sdk.init() first")
    return run


def log_artifact(*args: Any, **kwargs: Any) -> Artifact:
    """`wandb.log_artifact`: log on the active run."""
    return _active().log_artifact(*args, **kwargs)


def use_artifact(*args: Any, **kwargs: Any) -> Artifact | None:
    """`wandb.use_artifact`: use on the active run."""
    return _active().use_artifact(*args, **kwargs)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """`wandb.finish`: finish the active run, if any."""
    run = session.current_run()
    if run is not None:
        run.finish()
