//! A real `keepsake-server` for tests: the HTTP server on 127.0.0.1 (ephemeral port) over a fresh
//! database of the test cluster, with storage in a temporary folder (or a given destination).
//!
//! Crash behaviour (tests only): the server runs inside the test process; its database lives in the
//! test cluster, which the cluster's watchdog removes, and its storage is a temporary folder.

use std::path::PathBuf;

use keepsake_common::api::CreateOrgResponse;

use super::{test_db, TestDb};
use crate::app::{self, RunningServer};
use crate::config::{Config, Database};
use crate::destinations::DestinationConfig;

/// A running server and what it runs on.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub db: TestDb,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with local-folder storage.
    pub async fn start() -> TestServer {
        TestServer::start_with(None, None).await
    }

    /// Starts a server; `storage` replaces the default local folder, `platform_token` enables
    /// `POST /v1/orgs`.
    pub async fn start_with(
        storage: Option<DestinationConfig>,
        platform_token: Option<&str>,
    ) -> TestServer {
        TestServer::start_configured(|config| {
            if let Some(s) = storage {
                config.storage = s;
            }
            config.platform_token = platform_token.map(crate::destinations::Secret::new);
        })
        .await
    }

    /// Starts a server whose configuration `tune` adjusts (after the database and the local
    /// storage folder are set).
    pub async fn start_configured(tune: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KEEPSAKE_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("keepsake_server=warn")),
            )
            .try_init();
        let dir = tempfile::Builder::new()
            .prefix("keepsake-testserver")
            .tempdir()
            .expect("temp dir");
        let db = test_db().await;
        let mut config = Config::for_data_dir(dir.path().to_path_buf());
        config.database = Database::Url(db.url());
        tune(&mut config);
        let server = app::start(config, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("test server failed to start: {e}"));
        TestServer {
            server: Some(server),
            db,
            data_dir: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// Starts another server on this server's database and default local storage folder, as a
    /// second server process behind a load balancer would run. (A first server started with
    /// other storage keeps it to itself: the second one still uses [`Self::storage_dir`].)
    pub async fn start_another(&self) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("keepsake-testserver")
            .tempdir()
            .expect("temp dir");
        let db = TestDb {
            name: self.db.name.clone(),
            config: self.db.config.clone(),
            socket_dir: self.db.socket_dir.clone(),
        };
        let mut config = Config::for_data_dir(dir.path().to_path_buf());
        config.database = Database::Url(db.url());
        config.storage = DestinationConfig::Local {
            path: self.storage_dir(),
        };
        let server = app::start(config, std::future::pending())
            .await
            .unwrap_or_else(|e| panic!("second test server failed to start: {e}"));
        TestServer {
            server: Some(server),
            db,
            data_dir: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.url())
            .expect("server is running")
    }

    /// Where the default local storage keeps packs.
    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    /// Creates an organisation (admin token and first enrolment token included).
    pub async fn create_org(&self, name: &str) -> CreateOrgResponse {
        let owner = self.db.owner().await;
        let db = self.db.db();
        crate::db::orgs::create_org(
            &owner,
            &db,
            name,
            None,
            &format!("owner@{}.example", crate::db::orgs::slugify(name)),
            "local",
        )
        .await
        .unwrap_or_else(|e| panic!("create organisation {name}: {e}"))
    }

    /// A fresh enrolment token for `org`.
    pub async fn enroll_token(&self, org: uuid::Uuid) -> String {
        let db = self.db.db();
        let mut client = db.client().await.expect("pool");
        let tx = crate::db::begin(&mut client, &crate::db::Actor::System { org })
            .await
            .expect("begin");
        let (token, _, _) = crate::db::orgs::insert_enroll_token(&tx, org, None, 24, Some("test"))
            .await
            .expect("enroll token");
        tx.commit().await.expect("commit");
        token
    }

    /// Stops the server (graceful).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }
}
