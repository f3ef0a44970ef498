"""The example's own settings (`APP_EXAMPLE_*`), read when the service starts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigurationError


class ExampleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_EXAMPLE_", extra="ignore")

    payment_timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds after which an order nobody has paid is cancelled; unset: never."""


def load() -> ExampleSettings:
    try:
        return ExampleSettings()
    except ValidationError as exc:
        item = exc.errors()[0]
        name = f"APP_EXAMPLE_{'_'.join(map(str, item['loc'])).upper()}"
        raise ConfigurationError(f"{name}: {item['msg']} (got {item.get('input')!r})") from exc
