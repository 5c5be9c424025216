from django.urls import path

from apps.agents.consumers import RunEventsConsumer
from apps.notices.consumers import NoticesConsumer
from apps.workspaces.consumers import TerminalConsumer

websocket_urlpatterns = [
    path("ws/notices/", NoticesConsumer.as_asgi()),
    path("ws/workspaces/<int:workspace_id>/terminal/", TerminalConsumer.as_asgi()),
    path("ws/runs/<uuid:run_id>/", RunEventsConsumer.as_asgi()),
]
