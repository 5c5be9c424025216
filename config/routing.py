from django.urls import path

from apps.notices.consumers import NoticesConsumer

websocket_urlpatterns = [
    path("ws/notices/", NoticesConsumer.as_asgi()),
]
