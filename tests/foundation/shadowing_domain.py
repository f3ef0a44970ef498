"""A domain whose route would hide a built-in one (APP_DOMAIN=tests.foundation.shadowing_domain)."""

from fastapi import APIRouter

from app.brokers import Brokers
from app.bus import Bus
from app.settings import Settings

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "mine"}


async def setup(bus: Bus, brokers: Brokers, settings: Settings) -> None:
    return None
