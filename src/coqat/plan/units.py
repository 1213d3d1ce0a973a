"""Re-export of :mod:`coqat.units` (human-friendly numbers and sizes), which lives below
``coqat.law`` and ``coqat.plan`` so that both can use it."""

from coqat.units import fmt_count, parse_bytes, parse_number

__all__ = ["fmt_count", "parse_bytes", "parse_number"]
