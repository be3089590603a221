//! The HTTP client of the `/v1` API.
//!
//! Every call the agent makes is idempotent on the server, so every call is retried: network
//! errors, timeouts, 429 and 5xx answers are retried with exponential backoff and jitter, moving to
//! the next server URL of the list when one does not answer. 4xx answers are not retried; they
//! come back as [`ClientError::Api`] with the server's message.
//!
//! Crash behaviour: the client keeps nothing on disk. Because every call is idempotent, a crash or
//! a lost answer is repaired by making the same call again; the server's leases end jobs nobody
//! comes back for.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keepsake_common::api::*;
use keepsake_common::ids::{BlobId, CipherHash};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("server refused ({status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// Machine-readable code, when the server gives one.
        code: Option<String>,
        /// The whole JSON body.
        body: serde_json::Value,
    },
    /// No server could be reached (after retries).
    #[error("server unreachable: {0}")]
    Network(String),
    /// An answer could not be understood.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// A local file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client cannot be set up as configured (a refused URL, an unusable CA certificate).
    #[error("{0}")]
    Setup(String),
}

/// How the client reaches the servers: which plain-HTTP URLs it accepts and which extra CA it
/// trusts (see [`crate::home::AgentConfig`]).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Allow `http://` to servers that are not on this machine.
    pub insecure_http: bool,
    /// A CA certificate (PEM, may hold several) trusted besides the system's.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying later may help (the server or network is down).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network(_) => true,
            ClientError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// How long to keep trying.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Give up after this much time in total.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// What a commit attempt returned.
#[derive(Debug)]
pub enum CommitAnswer {
    /// The job is committed.
    Committed(Committed),
    /// Blobs the server does not hold.
    Missing(CommitMissing),
}

/// A client for one organisation's server(s).
pub struct ApiClient {
    urls: Vec<String>,
    current: AtomicUsize,
    token: Option<String>,
    http: Client,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

fn jitter(d: Duration) -> Duration {
    // Up to +50%, from the clock's low bits (no need for a cryptographic source).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Why no client could be built for a home.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The home is not enrolled or its configuration is unreadable.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// The configured server URLs or token are unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// An API client for an enrolled home, with the home's configuration; `retry` replaces the
/// default retry policy (the daemon gives up sooner and applies its own backoff, so it keeps
/// scanning and reporting while the server is away).
pub fn connect(
    home: &crate::home::Home,
    retry: Option<RetryPolicy>,
) -> Result<(crate::home::AgentConfig, std::sync::Arc<ApiClient>), ConnectError> {
    let cfg = home.config()?;
    let mut client = ApiClient::with_transport(
        cfg.server_urls.clone(),
        Some(cfg.token.clone()),
        &Transport {
            insecure_http: cfg.insecure_http,
            ca_cert: cfg.ca_cert.clone(),
        },
    )?;
    if let Some(r) = retry {
        client = client.with_retry(r);
    }
    Ok((cfg, std::sync::Arc::new(client)))
}

impl ApiClient {
    /// A client for `urls` (tried in order; the first that answers is kept), authenticated with
    /// `token` when given.
    pub fn new(urls: Vec<String>, token: Option<String>) -> Result<ApiClient, ClientError> {
        ApiClient::with_transport(urls, token, &Transport::default())
    }

    /// [`ApiClient::new`] with a transport: plain `http://` to another machine is refused unless
    /// `transport.insecure_http`; `transport.ca_cert` is trusted for HTTPS.
    pub fn with_transport(
        urls: Vec<String>,
        token: Option<String>,
        transport: &Transport,
    ) -> Result<ApiClient, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::Network("no server URL configured".into()));
        }
        crate::home::check_server_urls(&urls, transport.insecure_http)
            .map_err(ClientError::Setup)?;
        let mut builder = Client::builder();
        if let Some(path) = &transport.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Setup(format!("CA certificate {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    ClientError::Setup(format!(
                        "CA certificate {}: no PEM certificate in the file",
                        path.display()
                    ))
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(8)
            .user_agent(concat!("keepsake/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Network(e.to_string()))?;
        Ok(ApiClient {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            token,
            http,
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> ApiClient {
        self.retry = retry;
        self
    }

    /// Another client for the same servers and token with its own retry policy (sharing the
    /// connection pool), e.g. for progress reports that must not hold up the work for long.
    pub fn clone_with_retry(&self, retry: RetryPolicy) -> ApiClient {
        ApiClient {
            urls: self.urls.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
            token: self.token.clone(),
            http: self.http.clone(),
            retry,
        }
    }

    /// The server URL in use.
    pub fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends a request built by `build` (called again for each attempt), retrying transient
    /// failures and failing over between URLs.
    fn send<F>(&self, method: Method, path: &str, build: F) -> Result<Response, ClientError>
    where
        F: Fn(RequestBuilder) -> Result<RequestBuilder, ClientError>,
    {
        let start = Instant::now();
        let mut delay = self.retry.base;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let idx = self.current.load(Ordering::Relaxed) % self.urls.len();
            let mut rb = self
                .http
                .request(method.clone(), format!("{}{path}", self.urls[idx]));
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            let err = match build(rb)?.send() {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(resp);
                    }
                    let e = api_error(resp);
                    if !e.is_transient() {
                        return Err(e);
                    }
                    e
                }
                Err(e) => {
                    // Connection refused, reset, timeout: try the next server next time.
                    if self.urls.len() > 1 {
                        self.current
                            .store((idx + 1) % self.urls.len(), Ordering::Relaxed);
                    }
                    ClientError::Network(format!("{}: {e}", self.urls[idx]))
                }
            };
            if start.elapsed() + delay > self.retry.give_up_after {
                return Err(err);
            }
            tracing::warn!(attempt, error = %err, retry_in = ?delay, "request failed; retrying");
            std::thread::sleep(jitter(delay));
            delay = (delay * 2).min(self.retry.max_delay);
        }
    }

    fn json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
        resp.json().map_err(|e| ClientError::Decode(e.to_string()))
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::json(self.send(Method::GET, path, Ok)?)
    }

    fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::json(self.send(Method::POST, path, |rb| Ok(rb.json(body)))?)
    }

    /// `POST /v1/enroll` (no token needed).
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post_json("/v1/enroll", req)
    }

    /// `GET /v1/whoami`.
    pub fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get_json("/v1/whoami")
    }

    /// `GET /v1/keys`.
    pub fn keys(&self) -> Result<KeysResponse, ClientError> {
        self.get_json("/v1/keys")
    }

    /// `POST /v1/keys`.
    pub fn register_key(&self, req: &RegisterKeyRequest) -> Result<KeyRecord, ClientError> {
        self.post_json("/v1/keys", req)
    }

    /// `POST /v1/sources`.
    pub fn register_source(
        &self,
        root: &str,
        label: Option<&str>,
    ) -> Result<SourceInfo, ClientError> {
        self.post_json(
            "/v1/sources",
            &RegisterSourceRequest {
                root_path: root.to_string(),
                label: label.map(str::to_string),
            },
        )
    }

    /// `GET /v1/sources`.
    pub fn sources(&self) -> Result<Vec<SourceInfo>, ClientError> {
        self.get_json("/v1/sources")
    }

    /// `POST /v1/blobs/missing` (any number of IDs; batched).
    pub fn missing(&self, ids: &[BlobId]) -> Result<Vec<BlobId>, ClientError> {
        Ok(self.missing_detail(ids)?.0)
    }

    /// `POST /v1/blobs/missing`: the IDs this machine holds no trusted copy of, and those of them
    /// that other machines uploaded (which a machine holding the identity may check and adopt).
    pub fn missing_detail(
        &self,
        ids: &[BlobId],
    ) -> Result<(Vec<BlobId>, Vec<BlobId>), ClientError> {
        let mut out = Vec::new();
        let mut foreign = Vec::new();
        for batch in ids.chunks(MAX_MISSING_QUERY) {
            let r: MissingResponse = self.post_json(
                "/v1/blobs/missing",
                &MissingRequest {
                    ids: batch.to_vec(),
                },
            )?;
            out.extend(r.missing);
            foreign.extend(r.foreign);
        }
        Ok((out, foreign))
    }

    /// `POST /v1/blobs/adopt`: copies this machine read back and checked against their IDs.
    pub fn adopt(&self, copies: &[BlobCopy]) -> Result<u64, ClientError> {
        let mut adopted = 0;
        for batch in copies.chunks(MAX_ADOPT) {
            let r: AdoptResponse = self.post_json(
                "/v1/blobs/adopt",
                &AdoptRequest {
                    copies: batch.to_vec(),
                },
            )?;
            adopted += r.adopted;
        }
        Ok(adopted)
    }

    /// `POST /v1/packs` with a framed blob stream.
    pub fn upload_pack(&self, body: bytes::Bytes) -> Result<PackStored, ClientError> {
        Self::json(self.send(Method::POST, "/v1/packs", |rb| {
            Ok(rb
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body.clone()))
        })?)
    }

    /// `POST /v1/jobs`.
    pub fn start_job(
        &self,
        source: Uuid,
        kind: JobKind,
        wedding_critical: bool,
    ) -> Result<JobStarted, ClientError> {
        self.post_json(
            "/v1/jobs",
            &StartJobRequest {
                source_id: source,
                kind,
                wedding_critical,
            },
        )
    }

    /// `PUT /v1/jobs/{job}/parts/{part}` with the delta part in `file` (streamed from disk).
    pub fn put_part(&self, job: Uuid, part: u32, file: &Path) -> Result<PartStored, ClientError> {
        Self::json(
            self.send(Method::PUT, &format!("/v1/jobs/{job}/parts/{part}"), |rb| {
                let f = std::fs::File::open(file)?;
                Ok(rb
                    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                    .body(reqwest::blocking::Body::from(f)))
            })?,
        )
    }

    /// `POST /v1/jobs/{job}/commit`.
    pub fn commit(&self, job: Uuid, req: &CommitRequest) -> Result<CommitAnswer, ClientError> {
        match self.send(Method::POST, &format!("/v1/jobs/{job}/commit"), |rb| {
            Ok(rb.json(req))
        }) {
            Ok(resp) => Ok(CommitAnswer::Committed(Self::json(resp)?)),
            Err(ClientError::Api {
                status: 409, body, ..
            }) if body.get("missing").is_some() => Ok(CommitAnswer::Missing(
                serde_json::from_value(body).map_err(|e| ClientError::Decode(e.to_string()))?,
            )),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/jobs/{job}/fail`.
    pub fn fail_job(&self, job: Uuid, error: &str) -> Result<(), ClientError> {
        self.send(Method::POST, &format!("/v1/jobs/{job}/fail"), |rb| {
            Ok(rb.json(&FailJobRequest {
                error: error.to_string(),
            }))
        })
        .map(|_| ())
    }

    /// `GET /v1/policy`.
    pub fn policy(&self) -> Result<AgentPolicy, ClientError> {
        self.get_json("/v1/policy")
    }

    /// `POST /v1/heartbeat`.
    pub fn heartbeat(&self, hb: &Heartbeat) -> Result<(), ClientError> {
        self.send(Method::POST, "/v1/heartbeat", |rb| Ok(rb.json(hb)))
            .map(|_| ())
    }

    /// `GET /v1/points`.
    pub fn points(
        &self,
        source: Option<Uuid>,
        agent: Option<Uuid>,
    ) -> Result<Vec<RecoveryPointInfo>, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = source {
            q.push(format!("source_id={s}"));
        }
        if let Some(a) = agent {
            q.push(format!("agent_id={a}"));
        }
        self.get_json(&format!("/v1/points?{}", q.join("&")))
    }

    /// `GET /v1/points/{id}`.
    pub fn point(&self, id: Uuid) -> Result<RecoveryPointInfo, ClientError> {
        self.get_json(&format!("/v1/points/{id}"))
    }

    /// One page of `GET /v1/points/{id}/files`; the flag says whether another page follows.
    pub fn files_page(
        &self,
        point: Uuid,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        chunks: bool,
    ) -> Result<(Vec<FileAtPoint>, bool), ClientError> {
        let mut url =
            reqwest::Url::parse("http://x/").map_err(|e| ClientError::Decode(e.to_string()))?;
        url.set_path(&format!("/v1/points/{point}/files"));
        {
            let mut qp = url.query_pairs_mut();
            qp.append_pair("prefix", prefix);
            qp.append_pair("limit", &limit.to_string());
            qp.append_pair("chunks", if chunks { "true" } else { "false" });
            if let Some(a) = after {
                qp.append_pair("after", a);
            }
        }
        let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let resp = self.send(Method::GET, &path, Ok)?;
        let more = resp
            .headers()
            .get("x-keepsake-more")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        let text = resp
            .text()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            out.push(serde_json::from_str(line).map_err(|e| ClientError::Decode(e.to_string()))?);
        }
        Ok((out, more))
    }

    /// `POST /v1/recovery-jobs/claim`: the next recovery job for this machine (`None`: nothing
    /// to do). With `can_decrypt` false nothing is claimed; the server marks the waiting jobs as
    /// waiting for the key to be unlocked here.
    pub fn claim_recovery(
        &self,
        req: &ClaimRecoveryRequest,
    ) -> Result<Option<RecoveryJobInfo>, ClientError> {
        let resp = self.send(Method::POST, "/v1/recovery-jobs/claim", |rb| {
            Ok(rb.json(req))
        })?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /v1/recovery-jobs/{id}/progress`.
    pub fn recovery_progress(
        &self,
        job: Uuid,
        report: &RecoveryProgressReport,
    ) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/recovery-jobs/{job}/progress"),
            |rb| Ok(rb.json(report)),
        )
        .map(|_| ())
    }

    /// `POST /v1/recovery-jobs/{id}/logs`.
    pub fn recovery_log(&self, job: Uuid, entry: &RecoveryLogEntry) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/recovery-jobs/{job}/logs"),
            |rb| Ok(rb.json(entry)),
        )
        .map(|_| ())
    }

    /// `POST /v1/recovery-jobs/{id}/finish`.
    pub fn recovery_finish(&self, job: Uuid, finish: &RecoveryFinish) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/recovery-jobs/{job}/finish"),
            |rb| Ok(rb.json(finish)),
        )
        .map(|_| ())
    }

    /// `POST /v1/recovery-drills`.
    pub fn recovery_drill(&self, report: &RecoveryDrillReport) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            "/v1/recovery-drills",
            |rb| Ok(rb.json(report)),
        )
        .map(|_| ())
    }

    /// `GET /v1/recovery-jobs` (what the token may see).
    pub fn recovery_jobs(&self) -> Result<Vec<RecoveryJobInfo>, ClientError> {
        self.get_json("/v1/recovery-jobs")
    }

    /// `GET /v1/recovery-jobs/{id}`.
    pub fn recovery_job(&self, id: Uuid) -> Result<RecoveryJobDetail, ClientError> {
        self.get_json(&format!("/v1/recovery-jobs/{id}"))
    }

    /// `POST /v1/blobs/read`: a framed stream of the blobs, to read with the framing decoder.
    pub fn read_blobs(&self, ids: &[BlobId]) -> Result<impl Read, ClientError> {
        self.read_blobs_avoiding(ids, &[])
    }

    /// `POST /v1/blobs/read`, asking for copies other than `avoid` (copies found wrong).
    pub fn read_blobs_avoiding(
        &self,
        ids: &[BlobId],
        avoid: &[CipherHash],
    ) -> Result<impl Read, ClientError> {
        let req = ReadBlobsRequest {
            ids: ids.to_vec(),
            avoid: avoid.to_vec(),
        };
        self.send(Method::POST, "/v1/blobs/read", |rb| Ok(rb.json(&req)))
    }
}

fn api_error(resp: Response) -> ClientError {
    let status = resp.status();
    let body: serde_json::Value = resp.json().unwrap_or(serde_json::Value::Null);
    let message = body
        .get("error")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let code = body
        .get("code")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if status == StatusCode::UNAUTHORIZED {
        tracing::debug!("the server refused the token");
    }
    ClientError::Api {
        status: status.as_u16(),
        message,
        code,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_refuses_remote_plain_http_and_unusable_ca_files() {
        let remote = vec!["http://192.0.2.1:8420".to_string()];
        let err = ApiClient::new(remote.clone(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--insecure-http"), "{err}");
        let allowed = Transport {
            insecure_http: true,
            ca_cert: None,
        };
        assert!(ApiClient::with_transport(remote, None, &allowed).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let https = vec!["https://127.0.0.1:8420".to_string()];
        let missing = Transport {
            insecure_http: false,
            ca_cert: Some(dir.path().join("missing.pem")),
        };
        let err = ApiClient::with_transport(https.clone(), None, &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let bad = Transport {
            insecure_http: false,
            ca_cert: Some(junk),
        };
        let err = ApiClient::with_transport(https, None, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
