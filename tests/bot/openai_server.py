"""A local HTTP server that speaks the OpenAI chat-completions and moderations API.

The only test double in the suite: the real API is remote and paid. It answers from the passages in
the system prompt the way a grounded model would, and misbehaves on request (slow, rude, unsure),
so the fallbacks can be tested end to end through the real `openai` client.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.moderation_status = 200  # set to 503 to take the moderation endpoint down while completions still answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body})
                if self.path.endswith("/chat/completions"):
                    payload = server.complete(body)
                elif self.path.endswith("/moderations") and server.moderation_status != 200:
                    self.send_error(server.moderation_status)
                    return
                elif self.path.endswith("/moderations"):
                    flagged = "hate" in json.dumps(body["input"])
                    payload = {
                        "id": "modr-1",
                        "model": "omni-moderation-latest",
                        "results": [{"flagged": flagged, "categories": {}, "category_scores": {}}],
                    }
                else:
                    self.send_error(404)
                    return
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-1]["content"].lower()
        system = body["messages"][0]["content"]
        if "slow" in question:
            time.sleep(3)
        if "rude" in question:
            answer = "Shut up and read the manual."
        elif "hateful" in question:
            answer = "some hate speech"
        elif "unknown" in question:
            answer = "I don't know."
        elif "link elsewhere" in question:
            answer = "Log in at https://account-check.example/login to see it."
        elif "link the article" in question:
            link = re.search(r"\[1\] .+ \((https?://\S+)\)\n", system)
            answer = f"The article explains it: {link.group(1) if link else 'none'}"
        else:
            first = re.search(r"\[1\] (.+)\n(.+)", system)
            answer = f"According to '{first.group(1)}': {first.group(2)}" if first else "I don't know."
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }

    def close(self) -> None:
        self.httpd.shutdown()
