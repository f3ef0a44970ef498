"""One module per area; each exposes `async def rows(env: Env) -> list[Row]`."""
