//! The Prometheus endpoint: `GET /metrics` on `--metrics-addr`, served by hyper on the daemon's
//! runtime. Off unless asked for; without a host it listens on loopback only. Protected as
//! exporter-toolkit protects node_exporter's: TLS, client certificates and basic auth from
//! `--web.config.file` ([`web_config`]), and bounded: at most `--metrics-max-connections` open at
//! once, the least recently active one closed to make room, so idle or slow clients can neither
//! exhaust the daemon's descriptors nor keep a real scrape out.
mod basic_auth;
mod slots;
mod tls;
mod web_config;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use self::{
    basic_auth::BasicAuth,
    slots::Slots,
    web_config::{Fingerprint, Web, fingerprint},
};
use super::metrics::render;

/// OpenMetrics text, which Prometheus negotiates and parses.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long a client may take to complete the TLS handshake, then to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the endpoint: failing here (address in use, not permitted) stops the daemon with a clear
/// message before it traces anything.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))
}

/// The web config as last read, re-read when the file or a file it names (a certificate) changes:
/// certificates rotate without a restart. A change that cannot be used keeps the last good one.
pub(crate) struct WebConfig {
    path: Option<PathBuf>,
    files: Vec<PathBuf>,
    seen: Fingerprint,
    current: Arc<Web>,
}

impl WebConfig {
    /// Reads `--web.config.file` at start-up, where any problem is an error.
    pub(crate) fn open(path: Option<&Path>) -> Result<WebConfig> {
        let Some(path) = path else {
            return Ok(WebConfig {
                path: None,
                files: Vec::new(),
                seen: Vec::new(),
                current: Arc::new(Web::default()),
            });
        };
        let loaded = web_config::load(path)
            .with_context(|| format!("--web.config.file {}", path.display()))?;
        say(&loaded.web, path);
        Ok(WebConfig {
            path: Some(path.to_owned()),
            seen: fingerprint(&loaded.files),
            files: loaded.files,
            current: Arc::new(loaded.web),
        })
    }

    fn current(&mut self) -> Arc<Web> {
        let Some(path) = &self.path else {
            return self.current.clone();
        };
        let now = fingerprint(&self.files);
        if now != self.seen {
            self.seen = now;
            match web_config::load(path) {
                Ok(loaded) => {
                    info!("metrics endpoint: {} read again", path.display());
                    say(&loaded.web, path);
                    self.seen = fingerprint(&loaded.files);
                    self.files = loaded.files;
                    self.current = Arc::new(loaded.web);
                }
                Err(err) => warn!(
                    "metrics endpoint: {}: {err:#}; the previous configuration stays in use",
                    path.display()
                ),
            }
        }
        self.current.clone()
    }
}

fn say(web: &Web, path: &Path) {
    info!(
        "metrics endpoint: {}, {}",
        if web.tls.is_some() {
            "TLS"
        } else {
            "plain HTTP"
        },
        if web.users.is_empty() {
            "no authentication".to_owned()
        } else {
            format!("basic auth ({} users)", web.users.len())
        }
    );
    for note in &web.notes {
        warn!("metrics endpoint: {}: {note}", path.display());
    }
}

/// Serves scrapes until the daemon exits.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut web: WebConfig,
    max_connections: usize,
) {
    let auth = Arc::new(BasicAuth::new());
    let slots = Arc::new(Slots::new(max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("metrics endpoint: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, closed) = slots.open();
        let web = web.current();
        let (registry, auth, slots) = (registry.clone(), auth.clone(), slots.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = connection(stream, web, registry, auth, slots.clone(), id) => {}
                // Made room for a newer connection.
                _ = closed => {}
            }
            slots.close(id);
        });
    }
}

async fn connection(
    stream: TcpStream,
    web: Arc<Web>,
    registry: Arc<Registry>,
    auth: Arc<BasicAuth>,
    slots: Arc<Slots>,
    id: u64,
) {
    let tls = web.tls.clone();
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        slots.touch(id);
        let (web, registry, auth) = (web.clone(), registry.clone(), auth.clone());
        async move { Ok::<_, Infallible>(respond(&request, &registry, &web, &auth).await) }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    match tls {
        Some(tls) => {
            let handshake = TlsAcceptor::from(tls).accept(stream);
            // A failed handshake (plain HTTP sent to TLS, an unknown client certificate) gets
            // nothing but the TLS alert.
            if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
            }
        }
        None => {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
    }
}

async fn respond<B>(
    request: &Request<B>,
    registry: &Registry,
    web: &Arc<Web>,
    auth: &BasicAuth,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let authorization = request.headers().get(hyper::header::AUTHORIZATION);
    let (status, content_type, body) = if !auth.allows(web, path, authorization).await {
        (
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "Unauthorized\n".to_owned(),
        )
    } else {
        match (request.method(), path) {
            (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render(registry)),
            (&Method::GET, "/") => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "tcpstate tracer: metrics at /metrics\n".to_owned(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n".to_owned(),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic"),
        );
    }
    for (name, value) in &web.headers {
        headers.insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any request hyper lets through (any method, any path and query), without
        /// authentication configured: the metrics for `GET /metrics`, the pointer to them for
        /// `GET /`, else 404; a content type always.
        #[test]
        fn fuzz_respond(
            method in prop_oneof![
                prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get"])
                    .prop_map(str::to_owned),
                "[A-Za-z!#$%&'*+.^_`|~-]{1,12}",
            ],
            path in prop_oneof![
                prop::sample::select(vec!["/", "/metrics", "/metrics/", "//metrics", "*", "/%6Detrics"])
                    .prop_map(str::to_owned),
                crate::fuzz::any_text(),
            ],
            query in prop::option::of("[ -~]{0,20}"),
        ) {
            let uri = query.map_or(path.clone(), |q| format!("{path}?{q}"));
            let Ok(request) = Request::builder().method(method.as_str()).uri(&uri).body(()) else {
                return Ok(());
            };
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let web = Arc::new(Web::default());
            let response = runtime.block_on(respond(
                &request,
                &Registry::default(),
                &web,
                &BasicAuth::new(),
            ));
            let served = request.method() == Method::GET
                && matches!(request.uri().path(), "/" | "/metrics");
            let status = if served { StatusCode::OK } else { StatusCode::NOT_FOUND };
            prop_assert_eq!(response.status(), status, "{} {}", method, uri);
            prop_assert!(response.headers().contains_key(hyper::header::CONTENT_TYPE));
        }
    }
}
