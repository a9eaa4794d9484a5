"""One exception root for the project, one subclass per subsystem."""
from __future__ import annotations


class AudiostreamError(Exception):
    """Root of every error audiostream raises on purpose."""


class FrameError(AudiostreamError):
    """A frame on the wire could not be accepted.

    ``reason`` is a short, fixed, low-cardinality token (used as a Prometheus
    label and as the dead-letter ``reason`` header); the message says what
    exactly was wrong, with the bad value.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class WindowSpecError(AudiostreamError, ValueError):
    """A window spec value is invalid or two specs disagree."""


class BundleError(AudiostreamError):
    """A model bundle is missing, corrupt, or does not match what we can compute."""


class ConfigError(AudiostreamError, ValueError):
    """Invalid configuration: the message names the key and the bad value."""


class AudioInputError(AudiostreamError):
    """An audio file could not be read or converted."""


def bind_error(exc: OSError, addr: str, port: int, flag: str = "--metrics-port") -> AudiostreamError:
    """A clear error for an HTTP endpoint that cannot listen (port taken, privileged, bad address)."""
    import errno
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{flag} {port}: {addr}:{port} is already in use (another audiostream process on this "
                           f"host?); give each process its own port, or {flag} 0 for any free one (the start-up "
                           f"line says which)")
    if exc.errno == errno.EACCES:
        return ConfigError(f"{flag} {port}: not allowed to listen on {addr}:{port} (ports below 1024 need root); "
                           f"choose a port from 1024 up")
    return ConfigError(f"{flag} {port}: cannot listen on {addr}:{port}: {exc.strerror or exc}")
