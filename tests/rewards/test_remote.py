"""The HTTP reward client: what it sends, timeouts, retries with backoff, clear failures."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tether.rewards import RemoteReward, RewardError, call_reward


class Server:
    """A local reward server answering from a script of (status, body, delay) per request."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"body": body, "headers": dict(self.headers)})
                status, answer, delay = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                time.sleep(delay)
                data = json.dumps(answer(body) if callable(answer) else answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        servers.append(Server(script))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def lengths(body):
    return {"scores": [float(len(c)) for c in body["completions"]]}


@pytest.fixture
def sleeps(monkeypatch):
    delays = []
    monkeypatch.setattr("tether.rewards.remote._sleep", delays.append)
    return delays


def test_only_prompt_and_completion_text_are_sent(serve, monkeypatch):
    server = serve((200, lengths, 0))
    monkeypatch.setenv("TETHER_REWARD_TOKEN", "s3cret")
    chat = [{"role": "user", "content": "hi", "name": "alice", "metadata": {"id": 7}}]
    scores = call_reward(RemoteReward(server.url, batch_size=2), ["plain", chat, "third"], ["ab", "abc", "a"])
    assert scores.tolist() == [2.0, 3.0, 1.0]
    assert [r["body"] for r in server.requests] == [
        {"prompts": ["plain", [{"role": "user", "content": "hi"}]], "completions": ["ab", "abc"]},
        {"prompts": ["third"], "completions": ["a"]},
    ]
    assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cret"


def test_server_errors_are_retried_with_exponential_backoff(serve, sleeps):
    server = serve((503, "busy", 0), (429, "slow down", 0), (200, lengths, 0))
    assert RemoteReward(server.url, retries=3, backoff=0.5)(["p"], ["abcd"]) == [4.0]
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]


def test_timeouts_are_retried_then_fail_clearly(serve, sleeps):
    server = serve((200, lengths, 0.5))
    with pytest.raises(RewardError, match="timed out after 0.1 s \\(3 attempts\\)"):
        RemoteReward(server.url, timeout=0.1, retries=2, backoff=0.01)(["p"], ["abc"])
    assert len(server.requests) == 3 and sleeps == [0.01, 0.02]


def test_a_client_error_is_not_retried(serve, sleeps):
    server = serve((400, {"detail": "completions must be non-empty"}, 0))
    with pytest.raises(RewardError, match="HTTP 400.*must be non-empty"):
        RemoteReward(server.url)(["p"], ["abc"])
    assert len(server.requests) == 1 and sleeps == []


def test_an_unreachable_server_and_bad_answers_are_reward_errors(serve, sleeps):
    with pytest.raises(RewardError, match="3 attempts"):
        RemoteReward("http://127.0.0.1:9/score", retries=2, timeout=1)(["p"], ["a"])
    server = serve((200, {"scores": [1.0, 2.0]}, 0))
    with pytest.raises(RewardError, match="returned 2 scores for 1 completions"):
        RemoteReward(server.url)(["p"], ["a"])
    server = serve((200, {"result": "ok"}, 0))
    with pytest.raises(RewardError, match="expected"):
        RemoteReward(server.url)(["p"], ["a"])
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteReward("file:///etc/passwd")
