//! What keeps one client from stalling the server: a cap on the requests one bearer token may
//! have in flight at once, and request bodies that stream with a size limit and an idle timeout.
//!
//! * [`TokenLimiter`] counts the requests in flight per presented token (keyed by the token's
//!   hash, so no database is needed to decide); one over the cap is answered 429 at once.
//! * [`streamed`] turns a request body into an `AsyncRead` for the streaming routes (packs and
//!   delta parts). The body is already wrapped by `tower_http`'s `RequestBodyLimitLayer` (413 when
//!   a `Content-Length` is too large, an error once a stream passes the limit) and
//!   `RequestBodyTimeoutLayer` (an error when no data arrives for a while); [`TooLarge`] remembers
//!   that the limit was what ended the stream, so the handler answers 413 rather than 400.
//!
//! Crash behaviour: everything here is in memory and per process; a restart forgets the counts.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use http_body_util::LengthLimitError;
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::io::StreamReader;

use super::{ApiError, AppState};
use crate::auth::hash_token;

/// At most this many requests in flight per token (a per-token semaphore).
pub struct TokenLimiter {
    per_token: usize,
    in_flight: Mutex<HashMap<[u8; 32], Arc<Semaphore>>>,
}

impl TokenLimiter {
    pub fn new(per_token: usize) -> TokenLimiter {
        TokenLimiter {
            per_token: per_token.max(1),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for one request of the token with this hash, or `None` when it has
    /// `per_token` requests in flight already.
    fn try_acquire(&self, key: [u8; 32]) -> Option<TokenPermit<'_>> {
        let sem = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_token)))
                .clone()
        };
        let permit = sem.try_acquire_owned().ok()?;
        Some(TokenPermit {
            limiter: self,
            key,
            permit: Some(permit),
        })
    }

    /// Tokens with requests in flight (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// One request's place; gives it back (and forgets an idle token) when dropped.
struct TokenPermit<'a> {
    limiter: &'a TokenLimiter,
    key: [u8; 32],
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for TokenPermit<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self
            .limiter
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sem) = map.get(&self.key) {
            // Only the map holds it and nothing is in flight: forget the token.
            if Arc::strong_count(sem) == 1 && sem.available_permits() == self.limiter.per_token {
                map.remove(&self.key);
            }
        }
    }
}

/// Middleware: refuses a request whose bearer token already has the allowed number of requests
/// in flight. Requests without a token pass (they are refused by authentication).
pub async fn per_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(hash_token);
    let Some(key) = key else {
        return next.run(req).await;
    };
    let Some(_permit) = state.inner.limiter.try_acquire(key) else {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token already has {} requests in flight; retry when one has finished",
                state.inner.limiter.per_token
            ),
        )
        .with_code("too_many_requests");
        err.retry_after = Some(1);
        return err.into_response();
    };
    next.run(req).await
}

/// Set when a streamed body was cut off by the size limit.
#[derive(Clone, Default)]
pub struct TooLarge(Arc<AtomicBool>);

impl TooLarge {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The 413 answer for a body over `limit` bytes.
    pub fn error(limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
        .with_code("too_large")
    }
}

/// The body as a byte stream for the streaming routes, and the flag that says whether the size
/// limit ended it.
pub fn streamed(body: Body) -> (impl AsyncRead + Send + Unpin + 'static, TooLarge) {
    let flag = TooLarge::default();
    let seen = flag.clone();
    let stream = body.into_data_stream().map_err(move |e| {
        let mut source = e.source();
        while let Some(s) = source {
            if s.is::<LengthLimitError>() {
                seen.0.store(true, Ordering::Relaxed);
                break;
            }
            source = s.source();
        }
        std::io::Error::other(e.to_string())
    });
    (StreamReader::new(stream), flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_places_back_and_is_forgotten_when_idle() {
        let l = TokenLimiter::new(2);
        let a = l.try_acquire([1; 32]).expect("first");
        let b = l.try_acquire([1; 32]).expect("second");
        assert!(
            l.try_acquire([1; 32]).is_none(),
            "a third request is refused"
        );
        let other = l
            .try_acquire([2; 32])
            .expect("another token is not affected");
        drop(a);
        let c = l.try_acquire([1; 32]).expect("a place came back");
        drop((b, c, other));
        assert_eq!(l.tracked(), 0, "idle tokens are forgotten");
    }
}
