"""The pipeline's user errors: GenerateError, and the UserError behind a failed Beam run, found
again in what the runner raised (a worker sends back only its traceback's text).
"""

from __future__ import annotations

import re

from trainer.errors import UserError


class GenerateError(UserError):
    """The RTD shards cannot be generated as asked."""


# A worker's traceback ends with the exception's qualified name, e.g.
# "trainer.data.manifest.ShardError: ...".
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.*?)(?: \[while running '.*'\])?$",
                         re.MULTILINE)


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError that failed a pipeline, if one did. In-process runners re-raise it
    (message suffixed with the step); multi-process workers send back only the traceback
    text, whose last ``Name: message`` line we match against the UserError subclasses."""
    if isinstance(exc, UserError):
        return type(exc)(re.sub(r" \[while running '.*'\]$", "", str(exc)))
    names = {cls.__name__: cls for cls in _subclasses(UserError)}
    for name, message in reversed(_ERROR_LINE.findall(str(exc))):
        if name in names:
            return names[name](message)
    return None


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out
