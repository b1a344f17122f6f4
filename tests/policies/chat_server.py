"""A chat-completions server on loopback that plays scripted replies: what the llm and cmaes-llm tests talk to."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def chat(content) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


class Script:
    """Replies played in order, one per request: (status, body, headers, delay seconds)."""

    def __init__(self, *replies):
        self.replies, self.requests = list(replies), []


@pytest.fixture
def server():
    """(script, base URL): append (status, body, headers, delay) replies to script.replies."""
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            status, payload, headers, delay = script.replies.pop(0)
            if delay:
                threading.Event().wait(delay)
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


