//! Hub access honours `HF_ENDPOINT` and `HF_TOKEN`, as huggingface_hub does: a local HTTP server stands in
//! for the hub's address and records what the downloader asks it for. (One test in its own binary: it
//! sets process-wide environment variables.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

#[test]
fn downloads_go_to_hf_endpoint_with_hf_token() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_string());
        }
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        head
    });
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", format!("http://{addr}/"));
    std::env::set_var("HF_TOKEN", "hf_test_token");
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::remove_var("HF_HUB_OFFLINE");
    let err = peft_models::hub::resolve("some-org/some-model", None).unwrap_err().to_string();
    let head = server.join().unwrap();
    assert!(err.contains("some-org/some-model"), "{err}");
    assert!(
        head[0].starts_with("GET /some-org/some-model/resolve/main/config.json "),
        "request line: {:?}",
        head[0]
    );
    assert!(
        head.iter().any(|h| h.eq_ignore_ascii_case("authorization: Bearer hf_test_token")),
        "headers: {head:?}"
    );
}
