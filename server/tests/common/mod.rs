//! A server on an ephemeral port and a small HTTP/1.1 client over a plain TCP stream.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use internvl::engine::EngineConfig;
use server::{AppState, Options};

pub const MODEL: &str = "internvl";

/// Starts a server with the embedded checkpoint on 127.0.0.1:0 on its own thread; returns its address.
pub fn start(options: Options) -> SocketAddr {
    let model = internvl::embedded::internvl_model().expect("the embedded model loads");
    let engine = EngineConfig::sized_for(&model.text, 64, 256 << 20);
    start_with(model, engine, options)
}

/// Starts a server over `model` with an engine of `engine`.
pub fn start_with(
    model: internvl::InternVlModel,
    engine: EngineConfig,
    options: Options,
) -> SocketAddr {
    let state = AppState::start(model, engine, options).expect("the server starts");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("address"))
                .expect("send");
            server::serve(listener, state).await.expect("serve");
        });
    });
    rx.recv().expect("the server starts")
}

/// Body limit of the shared server.
pub const MAX_BODY: usize = 1 << 20;

/// One server shared by the tests of a file (no key, a 1 MiB body limit, 2 images).
pub fn shared() -> SocketAddr {
    static ADDR: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| {
        start(Options {
            served_model_name: MODEL.into(),
            max_body_bytes: MAX_BODY,
            max_images: 2,
            ..Options::default()
        })
    })
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    read_response(stream)
}

/// Sends only the head of a request declaring `content_length` bytes, and reads the response.
pub fn request_head_only(addr: SocketAddr, path: &str, content_length: usize) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write");
    read_response(stream)
}

fn read_response(mut stream: TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("a hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Response {
    request(addr, "POST", path, &[], body.to_string().as_bytes())
}

/// The `data:` payloads of a server-sent-events body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// A PNG from the preprocessing fixtures as a data URL.
pub fn png_data_url(name: &str) -> String {
    use base64::Engine;
    let path = format!(
        "{}/../fixtures/preprocess/src/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).expect("the fixture exists");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A PNG of the preprocessing fixtures.
pub fn fixture_image(name: &str) -> Vec<u8> {
    std::fs::read(fixture_image_path(name)).expect("the fixture exists")
}

pub fn fixture_image_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/preprocess/src")
        .join(name)
}

/// A small HTTP file server on 127.0.0.1: `/img/NAME` serves that fixture image, `/big` 64 KiB of
/// zeros, `/redirect/NAME` redirects to `/img/NAME`, anything else is 404.
pub fn file_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, extra, body) = if let Some(name) = path.strip_prefix("/img/") {
                    match std::fs::read(fixture_image_path(name)) {
                        Ok(bytes) => ("200 OK", String::new(), bytes),
                        Err(_) => ("404 Not Found", String::new(), Vec::new()),
                    }
                } else if let Some(name) = path.strip_prefix("/redirect/") {
                    (
                        "302 Found",
                        format!("Location: http://{addr}/img/{name}\r\n"),
                        Vec::new(),
                    )
                } else if path == "/big" {
                    ("200 OK", String::new(), vec![0u8; 64 << 10])
                } else {
                    ("404 Not Found", String::new(), Vec::new())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    addr
}

/// The request body of a one-image chat: greedy, `max_tokens`, the image at `url`.
pub fn image_chat(url: &str, max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url, "max_dynamic_patch": 1}},
            {"type": "text", "text": "What is in the image?"}
        ]}],
        "temperature": 0,
        "max_tokens": max_tokens
    })
}

/// The value of an unlabelled metric in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
