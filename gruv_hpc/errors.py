"""User-facing errors. The CLI prints these as one clear line (no traceback) and exits 2."""


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
