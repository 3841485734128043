#!/usr/bin/env python3
"""Slow and idle clients for scripts/slowloris (127.0.0.1 only, bounded in time).

  attackers.py PORT --slow 1000 --idle 1000 --seconds 30

--slow N   connections that send a request line and then one header byte a second,
           never finishing the head (slowloris); reconnect when the server closes them.
--idle N   connections that complete one keep-alive request, read the answer and then
           sit idle; reconnect when the server closes them (keep-alive timeout).
Prints one status line a second (open slow / open idle / reconnects) to stderr, and a
summary at the end. Exits after --seconds.
"""
import argparse
import asyncio
import sys
import time

HOST = "127.0.0.1"
stats = {"slow_open": 0, "idle_open": 0, "slow_reconnects": 0, "idle_reconnects": 0, "connect_errors": 0}


async def slow_client(port, deadline):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["slow_open"] += 1
        try:
            writer.write(b"GET /hello.py HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof():
                    break
        except (OSError, ConnectionError):
            pass
        finally:
            stats["slow_open"] -= 1
            writer.close()
        stats["slow_reconnects"] += 1


async def idle_client(port, deadline):
    request = b"GET /hello.py HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["idle_open"] += 1
        try:
            writer.write(request)
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"Hello, world!\n"), timeout=10)
            # Idle until the server closes us (keep-alive timeout) or the run ends.
            remaining = deadline - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(reader.read(1), timeout=remaining)
                except asyncio.TimeoutError:
                    pass
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            stats["idle_open"] -= 1
            writer.close()
        stats["idle_reconnects"] += 1


async def reporter(deadline):
    while time.monotonic() < deadline:
        print(f"attackers: slow open {stats['slow_open']}, idle open {stats['idle_open']}, "
              f"reconnects slow {stats['slow_reconnects']} idle {stats['idle_reconnects']}, "
              f"connect errors {stats['connect_errors']}", file=sys.stderr, flush=True)
        await asyncio.sleep(1)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()
    deadline = time.monotonic() + min(a.seconds, 300)
    tasks = [slow_client(a.port, deadline) for _ in range(a.slow)]
    tasks += [idle_client(a.port, deadline) for _ in range(a.idle)]
    await asyncio.gather(reporter(deadline), *tasks)
    print(f"attackers done: {stats}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
