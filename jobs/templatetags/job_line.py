"""`{{ report.line|in_line }}`: a queued job's place in line in words (jobs.line)."""

from django import template

from jobs.line import in_words

register = template.Library()


@register.filter
def in_line(place: dict | None) -> str:
    return in_words(place)
