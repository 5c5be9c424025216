from django.test import RequestFactory, override_settings

from apps.tenancy.audit import client_ip


def test_the_client_address_is_the_socket_peer_by_default() -> None:
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.7", HTTP_X_FORWARDED_FOR="6.6.6.6")
    assert client_ip(request) == "10.0.0.7"  # a header anyone can send is ignored


@override_settings(TRUST_X_FORWARDED_FOR=True)
def test_behind_a_trusted_proxy_the_address_it_appended_counts() -> None:
    # The client claimed 6.6.6.6; the proxy appended the address it saw.
    request = RequestFactory().get("/", REMOTE_ADDR="172.18.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert client_ip(request) == "203.0.113.9"


@override_settings(TRUST_X_FORWARDED_FOR=True)
def test_without_the_header_the_peer_is_used_even_behind_a_proxy() -> None:
    assert client_ip(RequestFactory().get("/", REMOTE_ADDR="172.18.0.5")) == "172.18.0.5"
