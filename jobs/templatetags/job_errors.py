"""`{{ job.error|one_line_error }}`: a job's error as its owner may see it (jobs.visibility)."""

from django import template

from jobs.visibility import one_line_error as _one_line_error

register = template.Library()


@register.filter
def one_line_error(error: str | None) -> str:
    return _one_line_error(error or "")
