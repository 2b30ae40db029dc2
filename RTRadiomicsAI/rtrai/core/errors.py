"""One error hierarchy for the whole library.

Everything we raise on purpose derives from :class:`RTRAIError`; the command line turns it into one line on stderr
and exit status 2. Any other exception escaping the library is a bug.
"""


class RTRAIError(Exception):
    """Base class of every error the library raises deliberately."""

    exit_code = 2


class InputError(RTRAIError):
    """Input that cannot be used: missing, unreadable, malformed or out of range."""


class FormatError(InputError):
    """A file whose content does not follow its format (malformed CSV row, truncated DICOM, ...)."""


class GeometryError(RTRAIError):
    """Images that should share a grid do not, or a grid that is itself inconsistent (uneven slices, tilt, ...)."""


class ModelError(RTRAIError):
    """A model file that cannot be used: unknown name, checksum mismatch, manifest not matching the input."""


class DependencyError(RTRAIError):
    """An optional Python package needed for this operation is not installed."""


def require(module: str, extra: str = "all"):
    """Import an optional dependency or raise :class:`DependencyError` naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"this needs the Python package '{module}' ({exc}); install it with: pip install 'rtradiomicsai[{extra}]'"
        ) from exc
