"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


def first_line(error: BaseException) -> str:
    """A library exception's first line, for a one-line message (or its type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class NimbuildError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class RecipeError(NimbuildError):
    pass


class SourceError(NimbuildError):
    pass


class ExportError(NimbuildError):
    pass


class ParityError(ExportError):
    """The exported graph does not reproduce the source model within tolerance."""


class ManifestError(NimbuildError):
    pass


class SystemDescriptionError(NimbuildError):
    """A malformed NIMBUILD_SYSTEM file."""


class SelectionError(NimbuildError):
    """No profile fits, or an override names what does not exist."""

    exit_code = 1


class RegistryError(NimbuildError):
    """An unreachable or misbehaving registry, a missing release, corrupt content."""


class IntegrityError(RegistryError):
    """Bytes that do not match their digest: never made visible under a final name."""
