//! Our tokenizer wrapper against transformers' `AutoTokenizer` on the same `tokenizer.json`
//! (`fixtures/tokenizer/cases.json`, made by `scripts/fixtures/make_qwen2.py`): special tokens inline, CJK,
//! emoji, digits, whitespace. The same cases hold for the tokenizer built without `tokenizer.json` from
//! `fixtures/tokenizer/slow/` (vocab.json, merges.txt, tokenizer_config.json, added_tokens.json,
//! special_tokens_map.json; `scripts/fixtures/make_slow_tokenizer.py` checks that transformers loads that
//! folder and gives these ids, see its meta.json).

use std::path::{Path, PathBuf};

use internvl::{IncrementalDecoder, TextTokenizer};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tokenizer")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap())
        .unwrap()
}

fn fixtures() -> (TextTokenizer, Value) {
    let tok = TextTokenizer::from_file(&fixture_dir().join("tokenizer.json")).unwrap();
    (tok, cases())
}

/// The tokenizer built from the slow-format files (there is no tokenizer.json in that folder).
fn slow_tokenizer() -> TextTokenizer {
    let dir = fixture_dir().join("slow");
    assert!(!dir.join("tokenizer.json").exists());
    TextTokenizer::from_dir(&dir).unwrap()
}

/// A fresh temporary folder holding the slow-format files, for variations of them.
fn slow_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("internvl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in SLOW_FILES {
        std::fs::copy(fixture_dir().join("slow").join(file), dir.join(file)).unwrap();
    }
    dir
}

const SLOW_FILES: [&str; 5] = [
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
];

fn assert_every_case_matches_transformers(tok: &TextTokenizer) {
    let cases = cases();
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

fn assert_special_tokens_match_transformers(tok: &TextTokenizer) {
    let cases = cases();
    let mut want: Vec<(String, u32)> = cases["special_tokens"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (t.clone(), id.as_u64().unwrap() as u32))
        .collect();
    want.sort_by_key(|(_, id)| *id);
    assert_eq!(tok.special_tokens(), want);
    for (token, id) in &want {
        assert_eq!(tok.token_id(token), Some(*id), "{token}");
    }
    assert_eq!(
        tok.vocab_size() as u64,
        cases["vocab_size"].as_u64().unwrap()
    );
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

#[test]
fn the_tokenizer_built_from_vocab_and_merges_gives_transformers_ids_and_decodes_on_every_case() {
    assert_every_case_matches_transformers(&slow_tokenizer());
}

#[test]
fn the_tokenizer_built_from_vocab_and_merges_has_the_special_tokens_at_transformers_ids() {
    assert_special_tokens_match_transformers(&slow_tokenizer());
}

#[test]
fn streaming_detokenization_with_the_built_tokenizer_concatenates_to_the_full_decode() {
    let tok = slow_tokenizer();
    for case in cases()["cases"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let mut decoder = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&decoder.push(&tok, id).unwrap());
        }
        streamed.push_str(&decoder.finish(&tok).unwrap());
        assert_eq!(streamed, case["decoded_skip_special"].as_str().unwrap());
    }
}

#[test]
fn from_dir_takes_tokenizer_json_when_the_folder_has_one() {
    let tok = TextTokenizer::from_dir(&fixture_dir()).unwrap();
    assert_every_case_matches_transformers(&tok);
    assert_special_tokens_match_transformers(&tok);
}

#[test]
fn without_added_tokens_decoder_the_added_tokens_come_from_added_tokens_json_and_the_special_map() {
    // transformers' legacy path, checked by make_slow_tokenizer.py on the same variation (meta.json).
    let dir = slow_copy("legacy-added");
    let config_path = dir.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("added_tokens_decoder");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    assert_every_case_matches_transformers(&tok);
    assert_special_tokens_match_transformers(&tok);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_without_any_tokenizer_files_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("internvl-no-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.json") && err.contains("merges.txt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_merge_line_without_two_tokens_is_a_clear_error() {
    let dir = slow_copy("bad-merges");
    std::fs::write(
        dir.join("merges.txt"),
        "#version: 0.2\nh e\nthree parts here\n",
    )
    .unwrap();
    let err = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_merge_of_tokens_missing_from_the_vocabulary_is_a_clear_error() {
    let dir = slow_copy("merge-oov");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\nnot_in vocab_here\n").unwrap();
    let err = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(
        err.contains("merges.txt") && err.contains("vocab.json"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_added_token_id_that_leaves_a_gap_after_the_vocabulary_is_a_clear_error() {
    let dir = slow_copy("gap");
    let config_path = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, text.replace("\"411\"", "\"500\"")).unwrap();
    let err = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("</box>") && err.contains("500"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_vocab_that_is_not_an_object_of_ids_is_a_clear_error() {
    let dir = slow_copy("bad-vocab");
    std::fs::write(dir.join("vocab.json"), "{\"a\": \"zero\"}").unwrap();
    let err = TextTokenizer::from_dir(&dir).err().unwrap().to_string();
    assert!(err.contains("vocab.json") && err.contains("\"a\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_internvl_checkpoint_without_tokenizer_json_loads_with_the_tokenizer_built_from_vocab_and_merges(
) {
    // internvl-300m-like's tokenizer.json is fixtures/tokenizer/tokenizer.json; here it is replaced by the
    // slow-format files, as the published InternVL2_5 repositories ship them.
    let dir = slow_copy("checkpoint-slow-tok");
    let src = fixture_dir().join("../internvl-300m-like");
    for file in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    let model = internvl::InternVlModel::load(&dir).unwrap();
    let cases = cases();
    let special = &cases["special_tokens"];
    let id = |t: &str| special[t].as_u64().unwrap() as u32;
    assert_eq!(
        model.image_tokens,
        internvl::ImageTokens {
            start: id("<img>"),
            end: id("</img>"),
            context: id("<IMG_CONTEXT>"),
        }
    );
    assert_every_case_matches_transformers(&model.text.tokenizer);
    let text_model = internvl::TextModel::load(&dir).unwrap();
    assert_eq!(text_model.stop_ids, model.text.stop_ids);
    std::fs::remove_dir_all(&dir).unwrap();
}
