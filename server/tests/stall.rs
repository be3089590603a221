//! One client cannot stall the server: slow uploads hold no database connection, a token's
//! requests in flight are capped, oversized streams are refused with 413 and leave nothing
//! behind — over real HTTP with real PostgreSQL.

#[path = "sync_support/mod.rs"]
mod sync_support;

use std::time::{Duration, Instant};

use keepsake_common::api::MAX_DELTA_PART_BODY;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use sync_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a `PUT` of a delta part that announces 1 MiB, sends the start of a delta and then
/// nothing more: a client on a very slow line (or a hostile one).
async fn slow_part(addr: &str, token: &str, job: uuid::Uuid, part: u32, start: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /v1/jobs/{job}/parts/{part} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    s.write_all(start).await.expect("send start");
    s
}

/// What the server answered on `s` within `wait`, if anything (the status line).
async fn answer(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_uploads_of_one_token_do_not_stall_another_organisation() {
    let srv = TestServer::start().await;
    let addr = srv.url().trim_start_matches("http://").to_string();
    let a_org = srv.create_org("Slow A").await;
    let b_org = srv.create_org("Busy B").await;
    let (_, a) = enroll(&srv, &a_org.enroll_token, "a-nas").await;
    let (_, b) = enroll(&srv, &b_org.enroll_token, "b-laptop").await;
    let a_src = source(&a, "/a").await;
    let a_job = start_job(&a, a_src, "incremental").await;
    let start = delta(a_src, &[]);
    let start = &start[..start.len() / 2];

    // 32 slow uploads from one token. The server's pool has 8 connections.
    let mut slow = Vec::new();
    for part in 0..32 {
        slow.push(slow_part(&addr, &a.token, a_job, part, start).await);
    }
    // The token's cap (16 in flight) answers the rest at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut refused = 0;
    for s in slow.iter_mut() {
        if let Some(status) = answer(s, Duration::from_millis(300)).await {
            assert!(
                status.contains("429"),
                "unexpected answer to a slow upload: {status}"
            );
            refused += 1;
        }
    }
    assert_eq!(
        refused, 16,
        "16 of 32 requests of one token are refused with 429"
    );

    // The server still answers, quickly.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        reqwest::get(format!("{}/readyz", srv.url())),
    )
    .await
    .expect("/readyz answers within 1 s while 16 uploads stall")
    .expect("readyz");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(1));

    // Another organisation backs up: pack, part, commit.
    let backup = async {
        let keys = test_keys();
        let data = vec![5u8; 50_000];
        let (h, blobs) = seal(&keys, &data, 20_000);
        upload(&b, &blobs.iter().collect::<Vec<_>>()).await;
        let src = source(&b, "/b").await;
        let job = start_job(&b, src, "incremental").await;
        let entries = [upsert("ceremony/IMG_0001.CR3", data.len(), h, &blobs)];
        let (s, v) = b
            .put_bytes(&format!("/v1/jobs/{job}/parts/0"), delta(src, &entries))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = commit(&b, job, 1).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    };
    tokio::time::timeout(Duration::from_secs(20), backup)
        .await
        .expect("another organisation's backup completes while one token's uploads stall");

    // The stalled uploads staged nothing.
    assert_eq!(
        db_count(
            &srv,
            &format!("SELECT count(*) FROM job_delta_entries WHERE backup_job_id = '{a_job}'")
        )
        .await,
        0
    );
    drop(slow);
}

#[tokio::test]
async fn an_oversized_part_gets_413_and_nothing_is_staged() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Big").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "nas").await;
    let src = source(&a, "/big").await;
    let job = start_job(&a, src, "incremental").await;

    // Announced too large: refused before the body is read.
    let r = a
        .req(reqwest::Method::PUT, &format!("/v1/jobs/{job}/parts/0"))
        .header("content-length", (MAX_DELTA_PART_BODY + 1).to_string())
        .body(vec![0u8; 16])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    // A well-formed delta streamed without a length, larger than the limit: 413 once it passes.
    let keys = test_keys();
    let (h, blobs) = seal(&keys, b"x", 1);
    let whole = delta(
        src,
        &[upsert("a/very/long/path/to/one/photo.CR3", 1, h, &blobs)],
    );
    // The header line, then the same upsert line over and over (the trailer never comes).
    let nl = whole.iter().position(|&c| c == b'\n').expect("header line") + 1;
    let line_end = nl
        + whole[nl..]
            .iter()
            .position(|&c| c == b'\n')
            .expect("entry line")
        + 1;
    let header = whole[..nl].to_vec();
    let line = whole[nl..line_end].to_vec();
    let chunk: Vec<u8> = line
        .iter()
        .copied()
        .cycle()
        .take(line.len() * 4096)
        .collect();
    let chunks = (MAX_DELTA_PART_BODY / chunk.len() as u64) + 2;
    let body = futures::stream::iter(
        std::iter::once(header)
            .chain((0..chunks).map(move |_| chunk.clone()))
            .map(Ok::<_, std::io::Error>),
    );
    let r = a
        .req(reqwest::Method::PUT, &format!("/v1/jobs/{job}/parts/1"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("the server answers before the stream ends");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(v["code"], "too_large", "{v}");

    assert_eq!(
        db_count(
            &srv,
            &format!("SELECT count(*) FROM job_delta_entries WHERE backup_job_id = '{job}'")
        )
        .await,
        0,
        "nothing of the oversized part is staged"
    );
    // The job is still usable: a normal part and the commit go through.
    let entries = [upsert("one.jpg", 1, h, &blobs)];
    upload(&a, &blobs.iter().collect::<Vec<_>>()).await;
    let (s, v) = a
        .put_bytes(&format!("/v1/jobs/{job}/parts/0"), delta(src, &entries))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = commit(&a, job, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
