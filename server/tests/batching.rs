//! Many requests at once: decoded together, answers as when alone, overload refused with 503, and a
//! client that goes away frees its place and its KV blocks.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{metric, post_json, request, start, start_with, MODEL};
use internvl::engine::EngineConfig;
use serde_json::{json, Value};
use server::Options;

fn completion(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true
    })
}

fn text(r: &common::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string()
}

fn metrics(addr: SocketAddr) -> String {
    request(addr, "GET", "/metrics", &[], b"").text()
}

/// Polls `/metrics` until `check` holds (or fails after 20 s).
fn wait_for_metrics(addr: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = metrics(addr);
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn concurrent_requests_are_decoded_in_one_batch_and_answer_as_when_alone() {
    let addr = start(Options {
        served_model_name: MODEL.into(),
        ..Options::default()
    });
    let prompts = [
        "Once upon a time",
        "The quick brown fox",
        "1, 2, 3, 4,",
        "In the beginning",
        "Hello",
        "A long, long prompt about many things that goes on for a while before it ends",
    ];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| text(&post_json(addr, "/v1/completions", &completion(p, 40))))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(move || text(&post_json(addr, "/v1/completions", &completion(p, 40)))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client"))
            .collect()
    });
    assert_eq!(together, alone);
    let body = metrics(addr);
    let passes = metric(&body, "internvl_decode_batch_size_count").expect("batch count");
    let single = metric(&body, "internvl_decode_batch_size_bucket{le=\"1\"}").expect("bucket");
    assert!(
        passes > single,
        "some decode pass held more than one sequence:\n{body}"
    );
}

/// Sends a streaming request and reads until its first text arrives; the returned stream keeps it open.
fn open_stream(addr: SocketAddr, body: &Value) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body.as_bytes()).expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = stream.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    stream
}

#[test]
fn past_the_batch_and_the_queue_requests_get_503_until_a_client_leaves_and_frees_its_blocks() {
    let model = internvl::embedded::internvl_model().expect("the embedded model");
    let engine = EngineConfig {
        max_running: 1,
        ..EngineConfig::sized_for(&model.text, 1, 64 << 20)
    };
    let addr = start_with(
        model,
        engine,
        Options {
            served_model_name: MODEL.into(),
            max_queue: 0,
            ..Options::default()
        },
    );
    let mut long = completion("Once upon a time", 20_000);
    long["stream"] = json!(true);
    let open = open_stream(addr, &long);
    let r = post_json(addr, "/v1/completions", &completion("Hello", 4));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "server_overloaded");
    wait_for_metrics(addr, "the long request is running", |m| {
        metric(m, "internvl_running_requests") == Some(1.0)
    });
    // The client goes away: its sequence is cancelled and every block comes back.
    drop(open);
    let body = wait_for_metrics(addr, "the cancelled request is gone", |m| {
        metric(m, "internvl_requests_cancelled_total") == Some(1.0)
            && metric(m, "internvl_running_requests") == Some(0.0)
            && metric(m, "internvl_kv_cache_free_blocks") == metric(m, "internvl_kv_cache_blocks")
    });
    let generated = metric(&body, "internvl_generation_tokens_total").unwrap_or(0.0);
    assert!(
        generated < 20_000.0,
        "cancelled before the end: {generated}"
    );
    let r = post_json(addr, "/v1/completions", &completion("Hello", 4));
    text(&r);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
}

#[test]
fn metrics_count_requests_tokens_and_latencies_in_the_prometheus_format() {
    let addr = start(Options {
        served_model_name: MODEL.into(),
        ..Options::default()
    });
    text(&post_json(addr, "/v1/completions", &completion("Hello", 5)));
    let r = post_json(
        addr,
        "/v1/completions",
        &json!({"model": "nope", "prompt": "a"}),
    );
    assert_eq!(r.status, 404);
    let r = request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain")));
    let body = r.text();
    for line in [
        "# TYPE internvl_time_to_first_token_seconds histogram",
        "# TYPE internvl_time_per_output_token_seconds histogram",
        "# TYPE internvl_queue_depth gauge",
        "internvl_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        "internvl_http_requests_total{route=\"/v1/completions\",status=\"404\"} 1",
    ] {
        assert!(body.contains(line), "`{line}` missing:\n{body}");
    }
    assert_eq!(metric(&body, "internvl_generation_tokens_total"), Some(5.0));
    assert_eq!(
        metric(&body, "internvl_time_to_first_token_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "internvl_time_per_output_token_seconds_count"),
        Some(4.0)
    );
    assert!(metric(&body, "internvl_prompt_tokens_total").unwrap_or(0.0) >= 1.0);
}
