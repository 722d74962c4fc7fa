"""Errors a user of ``agentrt.parallelism`` can see: each names the operator, dimension or limit at fault."""

from __future__ import annotations


class ParallelError(ValueError):
    """Base of every error this package raises on bad input (a model, a plan, a device count)."""


class CaptureError(ParallelError):
    """The model could not be captured as a graph (torch.export refused it)."""


class PlanError(ParallelError):
    """A transformation or placement is impossible (frozen dimension, size not divisible, unknown op)."""


class ScheduleError(ParallelError):
    """An order puts a consumer before its producer."""
