"""Errors of the Docker pipeline: each prints as one line and carries its own exit code."""

from __future__ import annotations

from slimmer.errors import SlimmerError


class EngineError(SlimmerError):
    """No Docker engine answers (the message says how to start one)."""

    exit_code = 6


class ImageMissingError(SlimmerError):
    """A base image is not on the engine, and no registry is used to get it."""

    exit_code = 6


class BuildError(SlimmerError):
    """A build step failed: the message holds its last lines and the path of the full log."""

    exit_code = 7


class ExtensionUnavailableError(BuildError):
    """Neither a wheel nor a source build could provide an extension (the message names every source tried)."""
