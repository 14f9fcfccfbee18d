//! `serve`'s endpoints: read-only, small requests only, each answered within a timeout.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use super::{SharedState, lock};

/// A request that takes longer is answered 408: renders take milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The endpoints take no body.
const MAX_BODY: usize = 1024;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves on `listener` from a thread of its own, with its own runtime.
pub fn spawn(listener: std::net::TcpListener, shared: SharedState) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("droptrace-http".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, router(shared)).await?;
                        anyhow::Ok(())
                    })
                });
            if let Err(e) = served {
                log::error!("the HTTP server stopped: {e:#}");
            }
        })?;
    Ok(())
}

pub fn router(shared: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/drops", get(drops))
        .route("/healthz", get(healthz))
        .with_state(shared)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

async fn metrics(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    // Prometheus asks for OpenMetrics in its Accept header; curl gets the classic format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = lock(&shared).metrics.encode(openmetrics);
    match body {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                if openmetrics {
                    OPENMETRICS_TEXT
                } else {
                    PROMETHEUS_TEXT
                },
            )],
            body,
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct DropsQuery {
    since: Option<String>,
}

async fn drops(State(shared): State<SharedState>, Query(q): Query<DropsQuery>) -> Response {
    let keep = lock(&shared).keep_drops;
    let since = match q.since.as_deref().map(humantime::parse_duration) {
        None => keep,
        Some(Ok(d)) => d.min(keep),
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("since: {e} (examples: 30s, 5m, 1h)"),
            );
        }
    };
    let s = lock(&shared);
    let list = s.recent.since(since, Instant::now());
    Json(serde_json::json!({
        "since_s": since.as_secs_f64(),
        "drops": list,
    }))
    .into_response()
}

async fn healthz(State(shared): State<SharedState>) -> Response {
    let s = lock(&shared);
    let uptime = s.started.elapsed().as_secs_f64();
    match &s.health {
        Some(h) if h.error.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "failing",
                "error": h.error,
                "uptime_s": uptime,
            })),
        )
            .into_response(),
        h => Json(serde_json::json!({
            "status": "ok",
            "uptime_s": uptime,
            "drops_reported": h.as_ref().map_or(0, |h| h.reported),
            "records_lost": h.as_ref().and_then(|h| h.records_lost),
        }))
        .into_response(),
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}
