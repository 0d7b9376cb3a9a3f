//! Our tokenizer wrapper against transformers' `AutoTokenizer` on the same `tokenizer.json`
//! (`fixtures/tokenizer/cases.json`, made by `scripts/fixtures/make_qwen2.py`): special tokens inline, CJK,
//! emoji, digits, whitespace.

use std::path::Path;

use internvl::{IncrementalDecoder, TextTokenizer};
use serde_json::Value;

fn fixtures() -> (TextTokenizer, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tokenizer");
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    (tok, cases)
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn encoding_and_decoding_equal_transformers_on_every_case() {
    let (tok, cases) = fixtures();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            tok.decode(&want).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

#[test]
fn special_token_ids_are_read_from_the_tokenizer() {
    let (tok, cases) = fixtures();
    for (token, id) in cases["special_tokens"].as_object().unwrap() {
        assert_eq!(
            tok.token_id(token),
            Some(id.as_u64().unwrap() as u32),
            "{token}"
        );
    }
}

#[test]
fn streaming_detokenization_concatenates_to_the_full_decode() {
    let (tok, cases) = fixtures();
    for case in cases["cases"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let mut decoder = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            let piece = decoder.push(&tok, id).unwrap();
            assert!(
                !piece.contains('\u{FFFD}'),
                "a partial character leaked: {piece:?}"
            );
            streamed.push_str(&piece);
        }
        streamed.push_str(&decoder.finish(&tok).unwrap());
        assert_eq!(streamed, tok.decode(&ids).unwrap());
    }
}

#[test]
fn a_broken_tokenizer_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("internvl-bad-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, b"{\"version\": ").unwrap();
    let err = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not a valid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
