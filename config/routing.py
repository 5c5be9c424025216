from django.urls import path

from apps.notices.consumers import NoticesConsumer
from apps.workspaces.consumers import TerminalConsumer

websocket_urlpatterns = [
    path("ws/notices/", NoticesConsumer.as_asgi()),
    path("ws/workspaces/<int:workspace_id>/terminal/", TerminalConsumer.as_asgi()),
]
