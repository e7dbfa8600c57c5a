"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations


class DFCompressError(Exception):
    """Bad input or an unmet requirement; the message names the problem and the fix."""

    exit_code = 2


class ConfigError(DFCompressError):
    """A configuration value or file is invalid."""


class UnknownComponentError(DFCompressError, KeyError):
    """A name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousComponentError(DFCompressError):
    """A bare name claimed by more than one plugin."""


class WeightsError(DFCompressError):
    """A weights file is missing, unreadable or does not match the model."""


class DataError(DFCompressError):
    """An evaluation or synthetic data set is missing, empty, corrupt or does not fit the teacher."""


class UnsupportedTeacherError(DFCompressError):
    """A synthesizer cannot work with this teacher (for example, it has no BatchNorm layers)."""


class UnsupportedModelError(DFCompressError):
    """A model cannot go through a backend (e.g. torch.export fails on its control flow); names the module."""


class PluginError(DFCompressError):
    """A component broke its contract (e.g. a synthesizer returned images of the wrong shape); names the plugin."""


class NonFiniteLossError(DFCompressError):
    """A loss became NaN or Inf."""


class Interrupted(Exception):
    """SIGINT/SIGTERM was received; state was saved. The CLI exits with code 130."""

    exit_code = 130

    def __init__(self, message: str, resume_hint: str = ""):
        super().__init__(message)
        self.resume_hint = resume_hint
