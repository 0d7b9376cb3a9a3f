//! The server end to end over HTTP with the embedded tiny checkpoint.

mod common;

use common::{png_data_url, post_json, request, request_head_only, shared, sse_data, MODEL};
use serde_json::{json, Value};

fn image_request(max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": png_data_url("tiny7x5.png"), "max_dynamic_patch": 1}},
                {"type": "text", "text": "What is in the image?"}
            ]}
        ],
        "temperature": 0,
        "seed": 7,
        "max_tokens": max_tokens,
        "some_unknown_field": {"ignored": true}
    })
}

fn assert_error(response: &common::Response, status: u16, needle: &str) -> Value {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "`{needle}` not in {message}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
    body
}

#[test]
fn health_answers_200() {
    let r = request(shared(), "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn models_lists_the_served_model_name() {
    let r = request(shared(), "GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["data"][0]["id"], MODEL);
    assert_eq!(body["data"][0]["object"], "model");
}

#[test]
fn a_chat_with_a_png_data_url_answers_in_the_openai_shape_with_usage() {
    let r = post_json(shared(), "/v1/chat/completions", &image_request(6));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["id"]
        .as_str()
        .unwrap_or_default()
        .starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    let usage = &body["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    // One 448-pixel tile is 256 <IMG_CONTEXT> tokens in the prompt.
    assert!(prompt > 256, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
    match choice["finish_reason"].as_str() {
        Some("length") => assert_eq!(completion, 6),
        Some("stop") => assert!(completion <= 6),
        other => panic!("finish_reason {other:?}"),
    }
}

#[test]
fn streamed_deltas_end_with_done_and_join_to_the_non_streamed_answer() {
    let addr = shared();
    let plain = post_json(addr, "/v1/chat/completions", &image_request(8)).json();
    let mut streamed = image_request(8);
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post_json(addr, "/v1/chat/completions", &streamed);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let events = sse_data(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("a JSON chunk"))
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, plain["choices"][0]["finish_reason"].as_str());
    let usage_chunk = chunks.last().expect("a usage chunk");
    assert_eq!(usage_chunk["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(usage_chunk["usage"], plain["usage"]);
}

#[test]
fn a_stop_string_cuts_the_answer_before_it_and_finishes_with_stop() {
    let addr = shared();
    let mut req = json!({
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "Tell me more"}
        ],
        "temperature": 0,
        "max_tokens": 24
    });
    let full = post_json(addr, "/v1/chat/completions", &req).json();
    let answer: Vec<char> = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .collect();
    assert!(
        answer.len() >= 4,
        "the greedy answer is long enough: {answer:?}"
    );
    let middle = answer.len() / 2;
    let stop: String = answer[middle..middle + 2].iter().collect();
    let answer: String = answer.iter().collect();
    let expected = &answer[..answer.find(&stop).unwrap_or(0)];
    req["stop"] = json!([stop]);
    let cut = post_json(addr, "/v1/chat/completions", &req).json();
    assert_eq!(cut["choices"][0]["message"]["content"], expected);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
}

#[test]
fn invalid_json_and_invalid_fields_are_400() {
    let addr = shared();
    let r = request(addr, "POST", "/v1/chat/completions", &[], b"{not json");
    assert_error(&r, 400, "not a valid chat completion request");
    let r = post_json(addr, "/v1/chat/completions", &json!({"model": MODEL}));
    assert_error(&r, 400, "messages");
    let mut bad_temperature = image_request(2);
    bad_temperature["temperature"] = json!(-1.0);
    let r = post_json(addr, "/v1/chat/completions", &bad_temperature);
    assert_error(&r, 400, "temperature");
}

#[test]
fn n_other_than_one_is_400() {
    let mut req = image_request(2);
    req["n"] = json!(2);
    let r = post_json(shared(), "/v1/chat/completions", &req);
    let body = assert_error(&r, 400, "n must be 1");
    assert_eq!(body["error"]["param"], "n");
}

#[test]
fn unsupported_image_urls_are_400() {
    for url in ["ftp://example.com/cat.png", "cat.png", "/tmp/cat.png"] {
        let req = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        });
        let r = post_json(shared(), "/v1/chat/completions", &req);
        assert_eq!(r.status, 400, "{url}: {}", r.text());
    }
}

#[test]
fn undecodable_image_data_is_400() {
    let req = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
            {"type": "text", "text": "?"}
        ]}]
    });
    let r = post_json(shared(), "/v1/chat/completions", &req);
    assert_error(&r, 400, "image 1");
}

#[test]
fn more_images_than_allowed_are_400() {
    let url = png_data_url("tiny7x5.png");
    let part = json!({"type": "image_url", "image_url": {"url": url}});
    let req = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [part.clone(), part.clone(), part]}]
    });
    let r = post_json(shared(), "/v1/chat/completions", &req);
    assert_error(&r, 400, "at most 2");
}

#[test]
fn an_unknown_model_is_404() {
    let mut req = image_request(2);
    req["model"] = json!("gpt-4o");
    let r = post_json(shared(), "/v1/chat/completions", &req);
    let body = assert_error(&r, 404, "gpt-4o");
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[test]
fn an_unknown_route_is_404_in_the_error_shape() {
    let r = request(shared(), "GET", "/v1/nothing", &[], b"");
    assert_error(&r, 404, "/v1/nothing");
}

#[test]
fn a_body_over_the_limit_is_413() {
    let r = request_head_only(shared(), "/v1/chat/completions", common::MAX_BODY + 1);
    assert_error(&r, 413, "limit");
}

#[test]
fn a_prompt_plus_max_tokens_over_the_context_is_400() {
    let r = post_json(shared(), "/v1/chat/completions", &image_request(40_000));
    let body = assert_error(&r, 400, "context of 32768 tokens");
    assert_eq!(body["error"]["param"], "max_tokens");
}
