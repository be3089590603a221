//! Transport: HTTPS with a certificate the test makes (rcgen), and the failure throttle keyed on
//! the real client — the TCP peer, or behind a trusted reverse proxy the address it forwards.
//! Clients come from different loopback addresses (127.0.0.x) to be different peers.

use std::net::IpAddr;
use std::path::Path;

use keepsake_server::config::TlsFiles;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files into `dir`.
fn self_signed(dir: &Path) -> (TlsFiles, reqwest::Certificate) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    let ca = reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap();
    (files, ca)
}

#[tokio::test]
async fn https_serves_health_to_a_client_trusting_the_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = self_signed(dir.path());
    let srv = TestServer::start_configured(|c| c.tls = Some(files.clone())).await;
    let url = srv.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    for probe in ["/healthz", "/readyz"] {
        let r = http.get(format!("{url}{probe}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{probe}");
    }
    // The same port does not speak plain HTTP.
    let plain = url.replacen("https://", "http://", 1);
    if let Ok(r) = reqwest::get(format!("{plain}/healthz")).await {
        assert_ne!(r.status(), StatusCode::OK, "plain HTTP was served");
    }
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::new();
    assert!(untrusting
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn a_missing_or_bad_certificate_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = self_signed(dir.path());
    let data = tempfile::tempdir().unwrap();
    let start = |tls: TlsFiles| {
        let mut config = keepsake_server::config::Config::for_data_dir(data.path().to_path_buf());
        config.tls = Some(tls);
        keepsake_server::app::start(config, std::future::pending())
    };
    let missing = TlsFiles {
        cert: dir.path().join("nowhere.pem"),
        key: files.key.clone(),
    };
    let err = start(missing).await.err().expect("refused").to_string();
    assert!(err.contains("nowhere.pem"), "{err}");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = TlsFiles {
        cert: dir.path().join("junk.pem"),
        key: files.key.clone(),
    };
    let err = start(junk).await.err().expect("refused").to_string();
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    // A key that is not the certificate's.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(
        dir.path().join("other.pem"),
        other.signing_key.serialize_pem(),
    )
    .unwrap();
    let mismatched = TlsFiles {
        cert: files.cert.clone(),
        key: dir.path().join("other.pem"),
    };
    let err = start(mismatched).await.err().expect("refused").to_string();
    assert!(err.contains("not usable together"), "{err}");
    // Nothing was started: no embedded cluster in the data directory.
    assert!(!data.path().join("postgres").exists());
}

/// A client connecting from the loopback address `from`.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn whoami(
    http: &reqwest::Client,
    srv: &TestServer,
    token: &str,
    xff: Option<&str>,
) -> StatusCode {
    let mut req = http
        .get(format!("{}/v1/whoami", srv.url()))
        .bearer_auth(token);
    if let Some(v) = xff {
        req = req.header("x-forwarded-for", v);
    }
    req.send().await.unwrap().status()
}

/// More failures than the default limit (20 per minute).
async fn fail_until_blocked(http: &reqwest::Client, srv: &TestServer, xff: Option<&str>) {
    let mut last = StatusCode::OK;
    for _ in 0..21 {
        last = whoami(http, srv, "ksu_bad", xff).await;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failures_of_one_client_do_not_lock_out_another_and_forged_forwarding_is_ignored() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Throttle Peers").await;
    let a = client_from("127.0.0.2");
    let b = client_from("127.0.0.3");
    // A forges a different X-Forwarded-For on every attempt: not a trusted proxy, so ignored.
    let mut last = StatusCode::OK;
    for i in 0..21 {
        last = whoami(&a, &srv, "ksu_bad", Some(&format!("198.51.100.{i}"))).await;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // A is blocked even with its valid token; B is not.
    assert_eq!(
        whoami(&a, &srv, &org.admin_token, None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        whoami(&b, &srv, "ksu_bad", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        whoami(&b, &srv, &org.admin_token, None).await,
        StatusCode::OK
    );
    // B cannot get out of its own failures by naming A either.
    assert_eq!(
        whoami(&b, &srv, &org.admin_token, Some("127.0.0.2")).await,
        StatusCode::OK
    );
    assert_eq!(
        whoami(&a, &srv, &org.admin_token, None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_and_a_success_clears_only_its_own() {
    let srv = TestServer::start_configured(|c| {
        c.trusted_proxies = vec!["127.0.0.4/32".parse().unwrap()];
    })
    .await;
    let org = srv.create_org("Throttle Proxy").await;
    let proxy = client_from("127.0.0.4");
    // Client B (as the proxy forwards it) fails until it is blocked.
    fail_until_blocked(&proxy, &srv, Some("198.51.100.8")).await;
    assert_eq!(
        whoami(&proxy, &srv, &org.admin_token, Some("198.51.100.8")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Client A behind the same proxy is not locked out, and its success does not free B.
    assert_eq!(
        whoami(&proxy, &srv, &org.admin_token, Some("198.51.100.7")).await,
        StatusCode::OK
    );
    assert_eq!(
        whoami(&proxy, &srv, "ksu_bad", Some("198.51.100.8")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // B's own address, prefixed by a forged hop, is still B (the right-most untrusted entry).
    assert_eq!(
        whoami(
            &proxy,
            &srv,
            &org.admin_token,
            Some("203.0.113.1, 198.51.100.8")
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The proxy itself (no header) is a client of its own and not blocked.
    assert_eq!(
        whoami(&proxy, &srv, &org.admin_token, None).await,
        StatusCode::OK
    );
}
