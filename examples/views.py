"""Views that enqueue a task and read its result back. A result belongs to the user
whose id the task was given: anyone else gets a 404."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST
from django_tasks import TaskResultStatus
from django_tasks.exceptions import TaskResultDoesNotExist

from .tasks import count_words


@login_required
@require_POST
def start_count(request: HttpRequest) -> JsonResponse:
    text = request.POST.get("text", "")
    result = count_words.enqueue(request.user.id, text)
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


@login_required
@require_GET
def count_result(request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        result = count_words.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"detail": "Not found."}, status=404)
    if result.args[0] != request.user.id:
        return JsonResponse({"detail": "Not found."}, status=404)
    answer = {"id": result.id, "status": result.status, "attempts": result.attempts}
    if result.status == TaskResultStatus.SUCCESSFUL:
        answer["result"] = result.return_value
    return JsonResponse(answer)
