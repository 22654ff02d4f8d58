#!/usr/bin/env python3
"""Start Tollgate's Stripe emulator (localstripe + tollgate_stripe.py).

    python tests/stripe/run.py [--port 0] [--state-file PATH] [--log-level warning]

Binds 127.0.0.1 only, on --port (0, the default, lets the OS pick), then prints exactly one
line to stdout, `LISTENING 127.0.0.1:<port>`, and flushes it; logs go to stderr.

State lives in memory.  With --state-file, it is loaded at start when the file exists and saved
to it on SIGTERM or SIGINT before exiting, so a test can stop the emulator (a Stripe outage) and
start it again on the same port with the same objects, idempotency keys, webhook endpoints and
undelivered events.

With --exit-on-stdin-eof the emulator also stops (saving its state) when its standard input
reaches end of file: a test that keeps the write end of a pipe to it cannot leave it running
after the test process dies.
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aiohttp import web  # noqa: E402

import tollgate_stripe  # noqa: E402


async def serve(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Lets a restarted emulator take the same port at once despite connections in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(('127.0.0.1', args.port))
    except OSError as e:
        print(f'run.py: cannot bind 127.0.0.1:{args.port}: {e}', file=sys.stderr)
        return 1
    sock.listen(128)
    port = sock.getsockname()[1]
    tollgate_stripe.BASE_URL = f'http://127.0.0.1:{port}'

    if args.state_file and os.path.exists(args.state_file):
        tollgate_stripe.load_state(args.state_file)

    runner = web.AppRunner(tollgate_stripe.make_app(),
                           access_log=logging.getLogger('aiohttp.access'))
    await runner.setup()
    await web.SockSite(runner, sock, shutdown_timeout=2).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        fd = sys.stdin.fileno()
        os.set_blocking(fd, False)

        def on_stdin():
            try:
                if os.read(fd, 4096) == b'':
                    loop.remove_reader(fd)
                    stop.set()
            except BlockingIOError:
                pass
        loop.add_reader(fd, on_stdin)

    sys.stdout.write(f'LISTENING 127.0.0.1:{port}\n')
    sys.stdout.flush()

    await stop.wait()
    await runner.cleanup()  # no request runs after this point
    if args.state_file:
        tollgate_stripe.save_state(args.state_file)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--state-file', default=None)
    parser.add_argument('--exit-on-stdin-eof', action='store_true',
                        help='stop (saving state) when stdin is closed')
    parser.add_argument('--log-level', default='warning',
                        choices=('debug', 'info', 'warning', 'error'),
                        help='stderr logging; info shows every request')
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format='stripe-emulator %(levelname)s %(message)s')
    sys.exit(asyncio.run(serve(args)))


if __name__ == '__main__':
    main()
