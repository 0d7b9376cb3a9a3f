//! Images from http URLs and local files, the private-address rule, and the image limits.

mod common;

use common::{file_server, fixture_image_path, image_chat, png_data_url, post_json, start, MODEL};
use server::media::MediaOptions;
use server::Options;

fn answer(r: &common::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

fn error_message(r: &common::Response, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn options(media: MediaOptions) -> Options {
    Options {
        served_model_name: MODEL.into(),
        media,
        ..Options::default()
    }
}

#[test]
fn an_http_image_gives_the_same_answer_as_the_same_image_inline_when_private_urls_are_allowed() {
    let files = file_server();
    let addr = start(options(MediaOptions {
        allow_private_urls: true,
        max_image_bytes: 32 << 10,
        ..MediaOptions::default()
    }));
    let inline = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&png_data_url("tiny7x5.png"), 6),
    ));
    let url = format!("http://{files}/img/tiny7x5.png");
    let fetched = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&url, 6),
    ));
    assert_eq!(fetched, inline);
    // Redirects are followed (and checked).
    let url = format!("http://{files}/redirect/tiny7x5.png");
    let redirected = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&url, 6),
    ));
    assert_eq!(redirected, inline);
    // A missing file and a file over --max-image-bytes.
    let url = format!("http://{files}/img/missing.png");
    let r = post_json(addr, "/v1/chat/completions", &image_chat(&url, 6));
    assert!(error_message(&r, 400).contains("404"));
    let url = format!("http://{files}/big");
    let r = post_json(addr, "/v1/chat/completions", &image_chat(&url, 6));
    assert!(error_message(&r, 413).contains("--max-image-bytes"));
}

#[test]
fn urls_to_loopback_addresses_are_refused_by_default_whether_literal_or_by_name() {
    let files = file_server();
    let addr = start(options(MediaOptions::default()));
    for host in [files.to_string(), format!("localhost:{}", files.port())] {
        let url = format!("http://{host}/img/tiny7x5.png");
        let r = post_json(addr, "/v1/chat/completions", &image_chat(&url, 4));
        let message = error_message(&r, 400);
        assert!(message.contains("private"), "{url}: {message}");
        assert!(message.contains("--allow-private-media-urls"), "{message}");
    }
}

#[test]
fn local_images_are_read_only_under_the_allowed_folder() {
    let folder = fixture_image_path("tiny7x5.png")
        .parent()
        .expect("a folder")
        .canonicalize()
        .expect("the fixture folder");
    let addr = start(options(MediaOptions {
        allowed_local_path: Some(folder.clone()),
        ..MediaOptions::default()
    }));
    let inline = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&png_data_url("tiny7x5.png"), 6),
    ));
    let path = folder.join("tiny7x5.png");
    let as_path = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(path.to_str().expect("utf-8"), 6),
    ));
    assert_eq!(as_path, inline);
    let as_url = answer(&post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&format!("file://{}", path.display()), 6),
    ));
    assert_eq!(as_url, inline);
    for outside in [
        format!("{}/../meta.json", folder.display()),
        "/etc/passwd".to_string(),
    ] {
        let r = post_json(addr, "/v1/chat/completions", &image_chat(&outside, 4));
        assert!(error_message(&r, 400).contains("not a readable file under"));
    }
    // Without the flag no local file is read.
    let closed = start(options(MediaOptions::default()));
    let r = post_json(
        closed,
        "/v1/chat/completions",
        &image_chat(path.to_str().expect("utf-8"), 4),
    );
    assert!(error_message(&r, 400).contains("--allowed-local-media-path"));
}

#[test]
fn images_over_the_pixel_limit_or_the_tile_limit_are_413() {
    let addr = start(Options {
        served_model_name: MODEL.into(),
        max_image_pixels: 7 * 5 - 1,
        ..Options::default()
    });
    let r = post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&png_data_url("tiny7x5.png"), 4),
    );
    assert!(error_message(&r, 413).contains("--max-image-pixels"));

    let addr = start(Options {
        served_model_name: MODEL.into(),
        max_tiles_per_request: 2,
        ..Options::default()
    });
    // 7x5 with up to 6 tiles is a 3x2 grid plus the thumbnail: 7 tiles.
    let mut req = image_chat(&png_data_url("tiny7x5.png"), 4);
    req["messages"][0]["content"][0]["image_url"]["max_dynamic_patch"] = 6.into();
    let r = post_json(addr, "/v1/chat/completions", &req);
    assert!(error_message(&r, 413).contains("7 tiles"));
    // One tile is within the limit.
    let ok = post_json(
        addr,
        "/v1/chat/completions",
        &image_chat(&png_data_url("tiny7x5.png"), 4),
    );
    answer(&ok);
}
