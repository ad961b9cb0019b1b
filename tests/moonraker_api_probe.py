"""Run by test_moonraker_clients: the PyPI ``moonraker-api`` client (asyncio/aiohttp)
against a printfarmd daemon. Prints one JSON line with what it saw; exit 0 on success.

Usage: python moonraker_api_probe.py PORT API_KEY FILENAME
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from moonraker_api import MoonrakerClient, MoonrakerListener


class Listener(MoonrakerListener):
    def __init__(self) -> None:
        self.queue_changes: asyncio.Queue[Any] = asyncio.Queue()

    async def state_changed(self, state: str) -> None:
        pass

    async def on_exception(self, exception: type | BaseException) -> None:
        pass

    async def on_notification(self, method: str, data: Any) -> None:
        if method == "notify_job_queue_changed":
            await self.queue_changes.put(data)


async def main(port: int, key: str, filename: str) -> dict[str, Any]:
    listener = Listener()
    async with aiohttp.ClientSession() as session:
        client = MoonrakerClient(listener, "127.0.0.1", port, api_key=key, session=session)
        assert await client.connect()
        try:
            state = await client.get_klipper_status()
            info = await client.get_server_info()
            before = await client.call_method("server.job_queue.status")
            # The change comes from elsewhere (HTTP), the notification over the client.
            url = f"http://127.0.0.1:{port}/server/job_queue/job"
            async with session.post(
                url, json={"filenames": [filename]}, headers={"X-Api-Key": key}
            ) as resp:
                assert resp.status == 200, await resp.text()
            change = await asyncio.wait_for(listener.queue_changes.get(), 10)
            ws_id = await client.get_websocket_id()
        finally:
            await client.disconnect()
    return {
        "klippy_state": state,
        "components": info["components"],
        "before": before,
        "change": change,
        "websocket_id": ws_id,
    }


if __name__ == "__main__":
    out = asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
    print(json.dumps(out))
