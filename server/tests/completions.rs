//! `/v1/completions`: text prompts without the chat template.

mod common;

use common::{post_json, request, shared, sse_data, MODEL};
use serde_json::{json, Value};

fn completion(prompt: Value, max_tokens: usize) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

fn text_of(body: &Value) -> String {
    body["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string()
}

#[test]
fn a_text_prompt_is_continued_in_the_text_completion_shape() {
    let r = post_json(
        shared(),
        "/v1/completions",
        &completion(json!("The capital of France is"), 5),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap_or_default().starts_with("cmpl-"));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["index"], 0);
    let usage = &body["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) >= 5, "{usage}");
    match body["choices"][0]["finish_reason"].as_str() {
        Some("length") => assert_eq!(completion_tokens, 5),
        Some("stop") => assert!(completion_tokens <= 5),
        other => panic!("finish_reason {other:?}"),
    }
}

#[test]
fn the_default_max_tokens_is_16_and_token_id_prompts_equal_their_text() {
    let addr = shared();
    let by_text = post_json(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hello world", "temperature": 0, "seed": 1}),
    )
    .json();
    assert!(by_text["usage"]["completion_tokens"].as_u64().unwrap_or(99) <= 16);
    // "Hello world" in the embedded checkpoint's (reduced) tokenizer, as HF tokenizers encodes it.
    let ids = [39, 267, 367, 277, 285, 366];
    let by_ids = post_json(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": ids, "temperature": 0, "seed": 1}),
    )
    .json();
    assert_eq!(by_ids["usage"]["prompt_tokens"], 6);
    assert_eq!(text_of(&by_ids), text_of(&by_text));
    assert_eq!(by_ids["usage"], by_text["usage"]);
}

#[test]
fn echo_puts_the_prompt_in_front_and_streaming_joins_to_the_same_text() {
    let addr = shared();
    let mut req = completion(json!("Once upon a time"), 6);
    req["echo"] = json!(true);
    let plain = post_json(addr, "/v1/completions", &req).json();
    let text = text_of(&plain);
    assert!(text.starts_with("Once upon a time"), "{text}");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = post_json(addr, "/v1/completions", &req);
    assert_eq!(r.status, 200);
    let events = sse_data(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON"))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["usage"], plain["usage"]);
}

#[test]
fn unsupported_options_and_bad_prompts_are_400() {
    let addr = shared();
    let cases = [
        (
            json!({"model": MODEL, "prompt": "a", "logprobs": 2}),
            "logprobs",
        ),
        (
            json!({"model": MODEL, "prompt": "a", "best_of": 3}),
            "best_of",
        ),
        (
            json!({"model": MODEL, "prompt": "a", "suffix": "z"}),
            "suffix",
        ),
        (json!({"model": MODEL, "prompt": ["a", "b"]}), "one prompt"),
        (json!({"model": MODEL, "prompt": ""}), "empty"),
        (json!({"model": MODEL, "prompt": [999999999]}), "vocabulary"),
        (
            json!({"model": MODEL, "prompt": "<IMG_CONTEXT>"}),
            "IMG_CONTEXT",
        ),
        (
            json!({"model": MODEL, "prompt": "a", "n": 2}),
            "n must be 1",
        ),
        (
            json!({"model": MODEL, "prompt": "a", "max_tokens": 40000}),
            "context",
        ),
        (json!({"model": MODEL}), "prompt"),
    ];
    for (body, needle) in cases {
        let r = post_json(addr, "/v1/completions", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let message = r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains(needle),
            "{body}: `{needle}` not in {message}"
        );
    }
    let r = request(addr, "POST", "/v1/completions", &[], b"[1,2");
    assert_eq!(r.status, 400);
    let r = post_json(
        addr,
        "/v1/completions",
        &json!({"model": "other", "prompt": "a"}),
    );
    assert_eq!(r.status, 404);
}
