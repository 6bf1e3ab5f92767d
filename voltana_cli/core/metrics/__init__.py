"""Measuring a run: the ``RequestLog`` both worlds produce, and the figures computed from it alone."""

from voltana_cli.core.metrics.log import InstanceRecord, RequestLog
from voltana_cli.core.metrics.summary import ITL_RULE, Summary, request_frame, summarize

__all__ = ["ITL_RULE", "InstanceRecord", "RequestLog", "Summary", "request_frame", "summarize"]
