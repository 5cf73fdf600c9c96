"""Typed errors shared by every layer; each message says what went wrong and what to do."""


class UafpError(Exception):
    """Base of every error the project raises on purpose (the CLI prints these as one line)."""


class DatasetError(UafpError):
    """A dataset or result file is missing, corrupt or inconsistent with the spec."""


class ConfigError(UafpError):
    """A setting or command-line option is invalid."""


class DeviceError(UafpError):
    """A piece of hardware (or its simulator) failed or did not answer."""


class ReconstructionError(UafpError):
    """A reconstruction could not start or continue."""
