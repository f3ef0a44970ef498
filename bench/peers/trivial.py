"""`python -m bench.peers.trivial PORT`: a bare ASGI app under uvicorn that answers every
request 202 with a small JSON body: what the load generator reaches when the service costs
next to nothing, printed beside the HTTP rows to show the generator is not their bottleneck."""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

BODY = b'{"status":"pending"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main(argv: list[str]) -> int:
    uvicorn.run(app, host="127.0.0.1", port=int(argv[0]), log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
