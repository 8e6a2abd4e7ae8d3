"""The OpenAPI schema's error answers: every operation documents the project's JSON error
format (jobsite/api.py) for the error statuses it can give, so clients and the schema fuzz
test know every answer the API may send."""

from __future__ import annotations

from typing import Any

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "object",
            "additionalProperties": True,
            "description": "For invalid input: the problems, by field.",
        },
    },
    "required": ["detail", "code"],
}
ERROR_DESCRIPTIONS = {
    "400": "Invalid input; `errors` names each field that is wrong.",
    "401": "No valid credentials.",
    "403": "Signed in, but not allowed to do this.",
    "404": "No such object among those the caller may see.",
    "409": "The object is not in a state that allows this.",
    "413": "The request body is too large.",
    "415": "The request body is not of a media type this operation reads.",
    "429": "Too many requests; retry after the `Retry-After` header's seconds.",
    "503": "The database is unavailable (`database_unavailable`); retry after the "
    "`Retry-After` header's seconds.",
}
UNSAFE_METHODS = {"post", "put", "patch", "delete"}
HTTP_METHODS = {"get", "head", "options", *UNSAFE_METHODS}
PAGE_PARAMETERS = {"page", "cursor"}


def document_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular post-processing hook: add the error answers to each operation."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    for path, path_item in result.get("paths", {}).items():
        for method, operation in path_item.items():
            if method in HTTP_METHODS:
                responses = operation.setdefault("responses", {})
                for status in error_statuses(path, method, operation):
                    responses.setdefault(status, _error_response(status))
    return result


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The error statuses an operation can answer, from what it takes: any may be refused
    credentials, permission or rate, or find the database down; objects named in the
    path or a page past the end may not exist; input may be invalid, too large or of the
    wrong type; an unsafe request may meet an object in the wrong state."""
    parameters = {p.get("name") for p in operation.get("parameters", [])}
    statuses = ["401", "403", "429", "503"]
    if "{" in path or parameters & PAGE_PARAMETERS:
        statuses.append("404")
    if parameters or "requestBody" in operation or method in UNSAFE_METHODS:
        statuses.append("400")
    if "requestBody" in operation or method in UNSAFE_METHODS:
        statuses += ["413", "415"]
    if method in UNSAFE_METHODS:
        statuses.append("409")
    return sorted(statuses)


def _error_response(status: str) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}
        },
    }
