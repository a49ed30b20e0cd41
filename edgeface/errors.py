"""The one exception base of edgeface.

Every error that edgeface raises on purpose (bad input, a wrong model, a broken gallery, a misconfigured
door) is an :class:`EdgefaceError`; the CLIs print those as one line. Anything else is a bug and keeps its
traceback. Domain classes keep a standard-library base too (``ImageError`` is also a ``ValueError``) so
callers that caught the old bases keep working.
"""


class EdgefaceError(Exception):
    """Base class of every error edgeface raises on purpose; its message is meant for a person."""


class OptionError(EdgefaceError, ValueError):
    """An argument, setting or environment variable outside its allowed values; the message names it."""


class MissingFileError(EdgefaceError, FileNotFoundError):
    """A file or folder the user named (or its documented default) does not exist; the message names it."""


BUG_NOTE = ("this is a bug in edgeface, not a problem with your input: please report it with the traceback above "
            "and `pip show edgeface` to the edgeface issue tracker")


def run_cli(prog: str, func, *args) -> int:
    """Run a command-line entry point the way every edgeface CLI does.

    An :class:`EdgefaceError` (bad input, missing model, broken gallery...) becomes one line
    ``prog: error: ...`` on stderr and exit status 2. Any other exception is a bug: it propagates with its
    traceback, which ends with one line saying so and where to report it.
    """
    import sys

    try:
        return func(*args)
    except EdgefaceError as exc:
        print(f"{prog}: error: {message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11: printed after the traceback
            exc.add_note(f"{prog}: {BUG_NOTE}")
        else:
            print(f"{prog}: {BUG_NOTE} (traceback follows)", file=sys.stderr)
        raise


def message(exc: BaseException) -> str:
    """The person-facing text of ``exc`` (a KeyError's message without the quotes ``str()`` adds)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)
