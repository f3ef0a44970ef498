"""URLs in logs and errors: the user name shown, a password or token never, wherever it sits
(the user info, the query string), even in a URL no parser accepts."""

import pytest

from app.brokers import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:abc/def@host:4222", "nats://user:***@host:4222"),
        ("nats://user:p#w?d@host:4222", "nats://user:***@host:4222"),
        ("redis://:p@ss@w0rd@host:6379/0", "redis://:***@host:6379/0"),
        ("nats://u:a://b@host:4222", "nats://u:***@host:4222"),
        ("rediss://user:[not-an-ipv6@host", "rediss://user:***@host"),
        ("user:secret@host:4222", "user:***@host:4222"),
        ("nats://host:4222", "nats://host:4222"),
        ("nats://s3cret-token@host:4222", "nats://***@host:4222"),
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        ("redis://h/0?password=s3cret", "redis://h/0?password=***"),
        (
            "postgresql://h/db?sslmode=require&PASSWORD=x&user=bob&sslkey=/k.pem",
            "postgresql://h/db?sslmode=require&PASSWORD=***&user=bob&sslkey=***",
        ),
        ("postgresql://u:pw@h/db?application_name=x", "postgresql://u:***@h/db?application_name=x"),
    ],
)
def test_urls_in_logs_keep_the_user_and_hide_every_secret(url, shown):
    assert redact_url(url) == shown
