"""A local HTTP server that speaks Twilio's Messages API, as tests/bot/openai_server.py speaks OpenAI's.

The real API is remote and paid, and sends real texts. This one answers `POST /2010-04-01/Accounts/{sid}/Messages.json`
(form-encoded, HTTP basic auth of account SID and auth token) the way Twilio does: the message's JSON with a `sid`
and `status` (201), Twilio's error JSON with 401 for wrong credentials, and 503 while it is told to be down, so the
official `twilio` client and the bot's sender are tested end to end.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class FakeTwilio:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.down_for = 0  # the next this-many requests get a 503, as while Twilio's API is down
        self.requests = 0  # every request that reached the server, refused or not
        self.sent: list[dict[str, str]] = []  # the messages it accepted, as their form fields
        self.unreachable: set[str] = set()  # numbers it refuses as Twilio refuses an invalid 'To' (400, error 21211)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
                status, payload = server.handle(self.path, self.headers.get("Authorization"), form)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, path: str, authorization: str | None, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        with self._lock:
            self.requests += 1
            if self.down_for > 0:
                self.down_for -= 1
                return 503, {"code": 20500, "message": "Service unavailable", "status": 503}
            expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
            if authorization != expected:
                return 401, {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                }
            if path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
                return 404, {"code": 20404, "message": f"The requested resource {path} was not found", "status": 404}
            if not form.get("To") or not form.get("From") or not form.get("Body"):
                return 400, {"code": 21604, "message": "A 'To', 'From' and 'Body' are required", "status": 400}
            if form["To"] in self.unreachable:
                return 400, {"code": 21211, "message": f"The 'To' number {form['To']} is not a valid phone number.", "status": 400}
            sid = f"SM{len(self.sent):032x}"
            self.sent.append({**form, "sid": sid})
            return 201, {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form["To"],
                "from": form["From"],
                "body": form["Body"],
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            }

    def close(self) -> None:
        self.httpd.shutdown()
