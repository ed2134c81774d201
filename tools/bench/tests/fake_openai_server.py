"""A tiny stand-in for an OpenAI-compatible server, for the harness's tests (no model).

    python fake_openai_server.py --port PORT [--chunks N] [--delay S] [--no-details]
        [--exit-after N] [--ignore-signals] [--spawn-child]

GET /health answers 200. POST /v1/chat/completions streams N one-word content chunks, a
finish chunk and a usage chunk: prompt_tokens = 10 x (number of messages), cached_tokens = 10
x (messages - 1), completion_tokens = N + 2, reasoning_tokens = 2 (unless --no-details).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.01)
    parser.add_argument("--no-details", action="store_true")
    parser.add_argument("--exit-after", type=int, default=0, help="exit after N requests")
    parser.add_argument("--ignore-signals", action="store_true")
    parser.add_argument("--spawn-child", action="store_true", help="start a sleeping child")
    args = parser.parse_args()
    if args.ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", flush=True)
    served = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b'{"status": "ok"}' if self.path == "/health" else b"{}"
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length))
            with lock:
                served["n"] += 1
                if args.exit_after and served["n"] > args.exit_after:
                    os._exit(3)
            n_messages = len(request["messages"])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

            def send(obj: object) -> None:
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            send({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i in range(args.chunks):
                time.sleep(args.delay)
                send({"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]})
            send({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            usage: dict[str, object] = {
                "prompt_tokens": 10 * n_messages,
                "completion_tokens": args.chunks + 2,
                "total_tokens": 10 * n_messages + args.chunks + 2,
            }
            if not args.no_details:
                usage["prompt_tokens_details"] = {"cached_tokens": 10 * (n_messages - 1)}
                usage["completion_tokens_details"] = {"reasoning_tokens": 2}
            send({"choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
