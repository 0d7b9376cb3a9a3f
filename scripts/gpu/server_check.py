#!/usr/bin/env python3
"""The server with the language model and vision on the GPU (`server --device cuda`, embedded checkpoint):
a chat with an image (plain and streamed), 16 concurrent streamed chats that must all end complete, and
/metrics showing batched decoding. Standard library only (the GPU machine has no openai package).

    python3 server_check.py --server ./server --image ../../fixtures/preprocess/src/tiny7x5.png
"""

import argparse
import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read().decode()


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--image", required=True)
    args = p.parse_args()
    port = free_port()
    proc = subprocess.Popen([args.server, "--device", "cuda", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        print(line.rstrip(), flush=True)
        if " on http://" in line or time.time() > deadline:  # the listener is bound
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        url = "data:image/png;base64," + base64.b64encode(open(args.image, "rb").read()).decode()
        body = {"model": "internvl-embedded", "temperature": 0, "max_tokens": 16, "ignore_eos": True,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url, "max_dynamic_patch": 2}},
                    {"type": "text", "text": "What is in the image?"}]}]}
        status, text = post(f"{base}/v1/chat/completions", body)
        plain = json.loads(text)
        check(status == 200 and plain["usage"]["completion_tokens"] == 16, "a chat with an image on the GPU")
        results = [None] * 16

        def client(i):
            b = dict(body, stream=True, stream_options={"include_usage": True}, seed=i, temperature=0.8)
            _, raw = post(f"{base}/v1/chat/completions", b)
            events = [l[6:] for l in raw.splitlines() if l.startswith("data: ")]
            usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
            results[i] = (events[-1] == "[DONE]", usage[0]["completion_tokens"] if usage else None)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(all(r == (True, 16) for r in results),
              f"16 concurrent streamed chats complete ({time.time() - t0:.2f} s)")
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        for line in metrics.splitlines():
            if line.startswith(("internvl_decode_batch_size_count", "internvl_decode_batch_size_sum",
                                "internvl_time_to_first_token_seconds_sum",
                                "internvl_time_per_output_token_seconds_sum",
                                "internvl_time_per_output_token_seconds_count")):
                print(line)
        print("the server check on the GPU passed")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
