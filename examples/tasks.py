"""Tasks of the example: plain functions decorated with the framework's `@task`."""

from django_tasks import task

from jobs.engine import current_job


@task(max_attempts=5)
def count_words(user_id: int, text: str) -> dict:
    """Count the words of `text`, paragraph by paragraph, reporting progress and
    stopping at a checkpoint if the job is cancelled."""
    job = current_job()
    paragraphs = [p for p in text.split("\n\n") if p.strip()] or [""]
    words = 0
    for done, paragraph in enumerate(paragraphs, start=1):
        words += len(paragraph.split())
        job.progress(100 * done / len(paragraphs), f"Paragraph {done} of {len(paragraphs)}")
    return {"user_id": user_id, "words": words, "paragraphs": len(paragraphs)}
