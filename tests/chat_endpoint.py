"""A real, minimal OpenAI-compatible HTTP endpoint on loopback, for teacher tests."""

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class ChatHandler(BaseHTTPRequestHandler):
    """Subclasses implement ``answer(body) -> (status, reply text or None)``."""

    def answer(self, body: dict[str, Any]) -> tuple[int, str | None]:
        raise NotImplementedError

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, reply = self.answer(body)
        if reply is None:
            self.send_response(status)
            self.end_headers()
            return
        answer = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None: ...
