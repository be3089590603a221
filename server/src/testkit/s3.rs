//! A real S3-API server (s3s-fs: the s3s protocol implementation over a local folder), started on
//! 127.0.0.1 for tests of the S3 path. Requests are signed and authenticated like real S3.
//!
//! Crash behaviour (tests only): the server runs inside the test process and its folder is a
//! temporary directory, so both end with the process.

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

use crate::destinations::{DestinationConfig, Secret};

/// A running S3-API server with one bucket.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Where s3s-fs keeps the objects (`<root>/<bucket>/<key>`), for corruption tests.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on an ephemeral port, on a thread and runtime of its own (so it can serve
    /// any test runtime and child processes).
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("keepsake-s3")
            .tempdir()
            .expect("temp dir for the S3 server");
        let root = dir.path().to_path_buf();
        let bucket = "keepsake-test".to_string();
        std::fs::create_dir_all(root.join(&bucket)).expect("bucket dir");
        let access_key = format!("AK{}", uuid::Uuid::new_v4().simple());
        let secret_key = format!("SK{}", uuid::Uuid::new_v4().simple());
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind S3 test server");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ak, sk, fs_root) = (access_key.clone(), secret_key.clone(), root.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("S3 server runtime");
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&fs_root).expect("s3s-fs root");
                let mut b = S3ServiceBuilder::new(fs);
                b.set_auth(SimpleAuth::from_single(ak, sk));
                let service = b.build();
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let (stop_async_tx, mut stop_async_rx) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    let _ = stop_rx.recv();
                    let _ = stop_async_tx.send(());
                });
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move { let _ = conn.await; });
                        }
                        _ = &mut stop_async_rx => break,
                    }
                }
            });
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            bucket,
            access_key,
            secret_key,
            root,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Destination configuration pointing at this server.
    pub fn destination_config(&self, prefix: Option<&str>) -> DestinationConfig {
        DestinationConfig::S3 {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(Secret::new(self.secret_key.clone())),
            prefix: prefix.map(str::to_string),
            allow_http: true,
            virtual_hosted: false,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
