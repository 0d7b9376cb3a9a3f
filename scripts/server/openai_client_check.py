#!/usr/bin/env python3
"""Drives the `server` binary with the official `openai` Python client, as a user would.

Starts the server (embedded checkpoint, a bearer key, private image URLs allowed so a local file server can
serve an image) and a local HTTP file server, then checks what the client parses: the model list, a chat
with and without streaming (the streamed deltas join to the plain answer), an image as a data URL and as an
http URL (the same answer), a text completion, and the errors the client raises for a wrong model, a wrong
key and a prompt over the context. Exits non-zero with the reason on the first failure.

    python scripts/server/openai_client_check.py --server target/debug/server --images fixtures/preprocess/src
"""

import argparse
import base64
import functools
import http.server
import socket
import subprocess
import sys
import threading
import time

import openai

KEY = "ci-key"
MODEL = "internvl-embedded"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, port):
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--api-key", KEY, "--allow-private-media-urls",
         "--kv-cache-tokens", "65536"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        if " on http://" in line:  # printed once the listener is bound
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the server did not start (exit {proc.poll()})")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def start_file_server(folder):
    handler = functools.partial(QuietHandler, directory=folder)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


def image_messages(url):
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url, "max_dynamic_patch": 1}},
        {"type": "text", "text": "What is in the image?"},
    ]}]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--images", required=True)
    args = parser.parse_args()

    port = free_port()
    server = start_server(args.server, port)
    files = start_file_server(args.images)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)

        models = client.models.list()
        check([m.id for m in models.data] == [MODEL], f"models.list() gives [{MODEL}]")

        messages = [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Say hello."}]
        plain = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                               max_tokens=12, seed=1)
        choice = plain.choices[0]
        check(isinstance(choice.message.content, str) and choice.message.role == "assistant",
              "a chat answer is an assistant message")
        check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
        check(plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
              and 0 < plain.usage.completion_tokens <= 12, f"usage {plain.usage}")

        stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                max_tokens=12, seed=1, stream=True,
                                                stream_options={"include_usage": True})
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                if delta.content:
                    pieces.append(delta.content)
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        check("".join(pieces) == choice.message.content, "streamed deltas join to the plain answer")
        check(finish == choice.finish_reason, "the stream ends with the same finish_reason")
        check(usage is not None and usage.completion_tokens == plain.usage.completion_tokens,
              "the stream's usage chunk matches")

        png = open(f"{args.images}/tiny7x5.png", "rb").read()
        data_url = "data:image/png;base64," + base64.b64encode(png).decode()
        inline = client.chat.completions.create(model=MODEL, messages=image_messages(data_url),
                                                temperature=0, max_tokens=8)
        check(inline.usage.prompt_tokens > 256, "an image as a data URL adds 256 tokens per tile")
        http_url = f"http://127.0.0.1:{files.server_address[1]}/tiny7x5.png"
        fetched = client.chat.completions.create(model=MODEL, messages=image_messages(http_url),
                                                 temperature=0, max_tokens=8)
        check(fetched.choices[0].message.content == inline.choices[0].message.content
              and fetched.usage == inline.usage, "the same image by http URL gives the same answer")

        completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                               temperature=0)
        check(completion.object == "text_completion" and isinstance(completion.choices[0].text, str)
              and completion.usage.completion_tokens <= 5, "a text completion")

        try:
            client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2)
            check(False, "an unknown model raises NotFoundError")
        except openai.NotFoundError as e:
            check(e.status_code == 404 and "gpt-4o" in str(e), "an unknown model raises NotFoundError")
        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong",
                          max_retries=0).models.list()
            check(False, "a wrong key raises AuthenticationError")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, "a wrong key raises AuthenticationError")
        try:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10**6)
            check(False, "max_tokens over the context raises BadRequestError")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and "context" in str(e),
                  "max_tokens over the context raises BadRequestError")
        print("the openai client check passed")
    finally:
        server.terminate()
        server.wait(timeout=30)
        files.shutdown()


if __name__ == "__main__":
    sys.exit(main())
