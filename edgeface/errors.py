"""The one exception base of edgeface.

Every error that edgeface raises on purpose (bad input, a wrong model, a broken gallery, a misconfigured
door) is an :class:`EdgefaceError`; the CLIs print those as one line. Anything else is a bug and keeps its
traceback. Domain classes keep a standard-library base too (``ImageError`` is also a ``ValueError``) so
callers that caught the old bases keep working.
"""


class EdgefaceError(Exception):
    """Base class of every error edgeface raises on purpose; its message is meant for a person."""
