"""The closed set of outcomes and the errors that map onto them.

Every error gate raises on purpose is a :class:`GateError`; its ``exit_code`` says how the CLI ends when
it escapes. Anything else that escapes is a crash: exit 3, with its traceback kept in a crash log.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    #: every blocking rule held and no check failed to run (``gate verify``: a valid passing attestation)
    PASS = 0
    #: a blocking rule was breached (enforce mode), a promotion or an attestation was refused
    BLOCKED = 1
    #: bad input or configuration: nothing was validated
    BAD_INPUT = 2
    #: a validator raised while running, or gate itself crashed: nothing was validated
    VALIDATOR_ERROR = 3
    #: ``gate verify``: the attestation is valid, but its verdict is not ``pass``
    NOT_PASSING = 4
    #: interrupted (^C / SIGINT)
    INTERRUPTED = 130


class GateError(Exception):
    """Base class; ``exit_code`` says how the CLI ends when this escapes."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class ConfigError(GateError):
    """The policy, a CLI option or a plugin is wrong."""


class InputError(GateError):
    """An image, a folder, a model version or a server cannot be used as input."""


class LimitExceeded(InputError):
    """An input is larger (bytes, pixels, seconds, memory) than gate accepts; the message names the limit."""


class ValidatorError(GateError):
    """A validator failed while running."""

    exit_code = ExitCode.VALIDATOR_ERROR


class Refusal(GateError):
    """Something that must not be trusted or allowed (an attestation, an audit log, a promotion); the
    message says why."""

    exit_code = ExitCode.BLOCKED


class SandboxError(GateError):
    """The candidate could not be sampled in isolation (the sandbox is missing or broke)."""
