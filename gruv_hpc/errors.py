"""User-facing errors. The CLI prints these as one clear line (no traceback) and exits 2; warnings
print as one line too (``plain_warnings``), on the terminal and in a job's log."""
import warnings


class GruvError(Exception):
    """Bad input or state; the message names the file or key and what is wrong."""


class ConfigError(GruvError, ValueError):
    pass


class DatasetError(GruvError):
    """A dataset is missing, incomplete, corrupt, or does not match what was asked of it."""


class GenerationError(GruvError, ValueError):
    pass


class TrainingError(GruvError, RuntimeError):
    pass


def plain_warnings() -> None:
    """Process-wide, stated where it is called (the CLI's entry, a job's start): a warning (a skipped
    file, a thin dev split) prints as one ``warning: ...`` line, every time, without the source line
    behind it: the same words on the terminal and in a job's log."""
    warnings.simplefilter("always")
    warnings.formatwarning = lambda msg, *args, **kw: f"warning: {msg}\n"
