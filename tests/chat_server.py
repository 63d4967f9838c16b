"""An OpenAI-compatible chat server on 127.0.0.1 for the storyline tests: it answers `POST …/chat/completions` from
a script of (status, body) pairs, or from a function of the request body, and keeps every request it was sent."""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict]


class FakeChatServer:
    """`answers`: the (status, body) to send for each request in turn, or a function of the request's JSON body."""

    def __init__(self, answers: list[Answer] | Callable[[dict], Answer]):
        self.answer = answers if callable(answers) else lambda body, script=list(answers): script.pop(0)
        self.requests: list[tuple[str, dict, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, dict(self.headers), body))
                status, answer = server.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [body for _, _, body in self.requests]

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str | None) -> dict:
    """A chat completion whose one choice says `content`."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
