"""Print the products whose stock is low, then each change to them, as it happens.
Usage: python examples/watch_low_stock.py [http://127.0.0.1:8000] [threshold]"""

import asyncio
import contextlib
import sys

from changecast_client import Change, ChangeCastError, ResyncBegin, Snapshot, Status, connect


async def main(url: str, threshold: int) -> None:
    async with await connect(url) as shop:
        low = await shop.subscribe("products", where=f"stock < {threshold}")
        async for event in low:
            if isinstance(event, Snapshot):
                print(f"{len(event.docs)} products below {threshold}:", flush=True)
                for doc in sorted(event.docs.values(), key=lambda d: d["stock"]):
                    print(f"  {doc['_id']:<14} {doc['stock']:>4}  {doc['name']}", flush=True)
            elif isinstance(event, Change) and event.op == "leave":
                print(f"- {event.key} is stocked again", flush=True)
            elif isinstance(event, Change):
                print(f"! {event.key} stock {low.view[event.key]['stock']}", flush=True)
            elif isinstance(event, ResyncBegin | Status):
                print(f"({event})", flush=True)


if __name__ == "__main__":
    url, threshold = (sys.argv[1:] + ["http://127.0.0.1:8000", "10"][len(sys.argv) - 1:])[:2]
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(main(url, int(threshold)))
        except (ChangeCastError, ValueError) as exc:
            sys.exit(f"watch_low_stock: {exc}")
