"""The signed-in user's own account over the API."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()


@extend_schema(tags=["auth"], responses=MeSerializer)
class Me(APIView):
    """Who the bearer token or the session belongs to."""

    def get(self, request: Request) -> Response:
        return Response(MeSerializer(request.user).data)
