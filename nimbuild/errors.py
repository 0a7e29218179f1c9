"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


def first_line(error: BaseException) -> str:
    """A library exception's first line, for a one-line message (or its type when it says nothing)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def shown(value) -> str:
    """A name from the user's input (a key, an id) for a message: as written, or escaped where it
    holds a control or line-break character, so that the message stays one line."""
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def _printable(text: str, keep: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


class NimbuildError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    Its message is one line (the CLI prints it after `error: `), whatever names from the input it
    quotes: a control or line-break character in them is escaped here, the one place every message
    passes (found by tests/unit/test_properties.py: a key holding a carriage return split the message).
    `multiline` classes list several problems or a table of figures, a line each."""

    exit_code = 2
    multiline = False

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_printable(args[0], keep="\n" if self.multiline else ""),)
        super().__init__(*args)


class RecipeError(NimbuildError):
    multiline = True  # a problem per line, each with its file and line, as compilers list them


class SourceError(NimbuildError):
    pass


class ExportError(NimbuildError):
    multiline = True  # parity failures end with the table of figures


class ParityError(ExportError):
    """The exported graph does not reproduce the source model within tolerance."""


class GateError(NimbuildError):
    """A precision variant that does not keep close enough to the reference."""

    multiline = True  # ends with the table of figures


class ManifestError(NimbuildError):
    pass


class SystemDescriptionError(NimbuildError):
    """A malformed NIMBUILD_SYSTEM file."""


class SelectionError(NimbuildError):
    """No profile fits, or an override names what does not exist."""

    exit_code = 1
    multiline = True  # when none fits: each profile with why not, a line each


class RegistryError(NimbuildError):
    """An unreachable or misbehaving registry, a missing release, corrupt content."""


class IntegrityError(RegistryError):
    """Bytes that do not match their digest: never made visible under a final name."""
