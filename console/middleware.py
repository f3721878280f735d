"""Requests carrying NUL characters are refused before anything reads them.

PostgreSQL refuses NUL in text, so a NUL that reaches a query (a token looked up from the
Authorization header, an admin filter like ?status__exact=%00) is a database error and a
500, before authentication has even answered. No legitimate request carries one.
"""

from urllib.parse import unquote_to_bytes

from django.http import HttpRequest, HttpResponseBadRequest, JsonResponse

MESSAGE = "NUL characters are not accepted"


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path or b"\x00" in unquote_to_bytes(request.META.get("QUERY_STRING", "")):
        return True
    if any("\x00" in str(value) for key, value in request.META.items() if key.startswith("HTTP_")):
        return True
    if request.content_type == "application/x-www-form-urlencoded":
        return b"\x00" in unquote_to_bytes(request.body)
    return False


class RejectNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        if _has_nul(request):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": MESSAGE}, status=400)
            return HttpResponseBadRequest(MESSAGE)
        return self.get_response(request)
