//! The Prometheus endpoint: `GET /metrics` on `--metrics-addr`, served by hyper on the daemon's
//! runtime. Off unless asked for; without a host it listens on loopback only.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

use super::metrics::render;

/// OpenMetrics text, which Prometheus negotiates and parses.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the endpoint: failing here (address in use, not permitted) stops the daemon with a clear
/// message before it traces anything.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))
}

/// Serves scrapes until the daemon exits.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("metrics endpoint: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
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
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any request hyper lets through (any method, any path and query): the metrics for
        /// `GET /metrics`, the pointer to them for `GET /`, else 404; a content type always.
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
            let response = respond(&request, &Registry::default());
            let served = request.method() == Method::GET
                && matches!(request.uri().path(), "/" | "/metrics");
            let status = if served { StatusCode::OK } else { StatusCode::NOT_FOUND };
            prop_assert_eq!(response.status(), status, "{} {}", method, uri);
            prop_assert!(response.headers().contains_key(hyper::header::CONTENT_TYPE));
        }
    }
}
