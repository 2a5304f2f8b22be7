"""Errors turbo raises on purpose: one sentence naming the problem and the fix."""


class TurboError(Exception):
    """Base class of every error turbo raises deliberately."""


class TurboConfigError(TurboError, ValueError):
    """A configuration value or combination is invalid."""


class UnsupportedModelError(TurboError, TypeError):
    """The object handed to `turbo.accelerate` is not a supported pipeline or transformer."""


class NotImplementedMethodError(TurboError, NotImplementedError):
    """A method that exists in the config schema but has not been built yet."""


class GeometryError(TurboError, ValueError):
    """The video shape cannot be handled (size, frame count, patching)."""
