//! Bearer keys, when the server is started with some.

mod common;

use common::{request, start, MODEL};
use server::Options;

#[test]
fn with_api_keys_a_missing_or_wrong_key_is_401_and_a_listed_key_is_served() {
    let addr = start(Options {
        served_model_name: MODEL.into(),
        api_keys: vec!["k1".into(), "k2".into()],
        ..Options::default()
    });
    let missing = request(addr, "GET", "/v1/models", &[], b"");
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    let wrong = request(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    let chat = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer nope")],
        b"{}",
    );
    assert_eq!(chat.status, 401);
    let right = request(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer k2")],
        b"",
    );
    assert_eq!(right.status, 200);
    assert_eq!(right.json()["data"][0]["id"], MODEL);
    // Health checks need no key.
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
}
