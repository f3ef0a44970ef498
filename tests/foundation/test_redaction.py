"""URLs in logs and errors: the user name shown, a password or token never, wherever it sits
(the user info, the query string), even in a URL no parser accepts."""

import pytest

from app.brokers import redact_text, redact_url


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


def test_a_drivers_message_keeps_the_user_name_and_hides_the_password():
    """PostgreSQL says `role "alice" does not exist`: the name is what must be fixed, and it
    is no secret (the password is)."""
    url = "postgresql://alice:s3cret-pw@db:5432/shop?sslpassword=k3y"
    said = f'password authentication failed for user "alice" (s3cret-pw) at {url}; k3y'
    shown = redact_text(said, url)
    assert 'user "alice"' in shown
    assert "s3cret-pw" not in shown
    assert "k3y" not in shown
    assert "postgresql://alice:***@db:5432/shop?sslpassword=***" in shown
    no_password = "postgresql://postgres@db/shop"
    assert redact_text('role "postgres" does not exist', no_password) == (
        'role "postgres" does not exist'
    )
    token = "nats://t0ken-value@host:4222"
    assert "t0ken-value" not in redact_text(f"bad token t0ken-value at {token}", token)
