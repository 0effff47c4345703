"""The closed set of outcomes and the errors that map onto them."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    #: every blocking rule held and no check failed to run
    PASS = 0
    #: a blocking rule was breached (enforce mode)
    BLOCKED = 1
    #: bad input or configuration: nothing was validated
    BAD_INPUT = 2
    #: a validator raised while running: nothing was validated
    VALIDATOR_ERROR = 3


class GateError(Exception):
    """Base class; ``exit_code`` says how the CLI ends when this escapes."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class ConfigError(GateError):
    """The policy, a CLI option or a plugin is wrong."""


class InputError(GateError):
    """An image, a folder, a model version or a server cannot be used as input."""


class ValidatorError(GateError):
    """A validator failed while running."""

    exit_code = ExitCode.VALIDATOR_ERROR
