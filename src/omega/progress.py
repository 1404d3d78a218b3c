"""Progress callbacks, declared once for every layer (like omega.errors).

Long work reports progress through one of these and never prints: whoever runs
it decides where it goes (the CLI draws it on stderr, see omega.cli.progress;
tests and libraries pass nothing).
"""

from __future__ import annotations

from collections.abc import Callable

#: Items done out of a total, called as the work advances: `progress(done, total)`.
Progress = Callable[[int, int], None]
#: One short message per step: `notes("verifying weights in ...")`.
Notes = Callable[[str], None]
#: Items done out of a total in a named stage: `stage("embedding catalog", done, total)`.
Stage = Callable[[str, int, int], None]


def quiet(*_: object) -> None:
    """The default callback of any kind: report nothing."""
