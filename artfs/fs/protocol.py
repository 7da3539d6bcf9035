"""Names the mount and the commands that talk to it (`artfs commit`, `diff`, `info PATH`) share.

Kept apart from ops.py and tree.py so a command that only names them does not import trio and
pyfuse3: that import took ~0.4 s of every `artfs` invocation, `put` and `commit` included.
"""

from __future__ import annotations

XATTR_PREFIX = "user.artfs."
#: `artfs commit/discard/stage` send their request as this attribute of the staging folder...
CONTROL_XATTR = XATTR_PREFIX + "control"
#: ...and read the reply from this one, suffixed with the request id.
RESULT_XATTR = XATTR_PREFIX + "result."
#: ...and how far a running commit has got from this one (bytes moved and expected).
PROGRESS_XATTR = XATTR_PREFIX + "progress."
#: The per-artifact staging folder; '@' cannot occur in any name, so no version or alias can
#: take it.
STAGING_NAME = "@staging"
