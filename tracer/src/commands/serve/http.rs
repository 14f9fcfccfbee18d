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

/// `ok`; `degraded` (still 200: a liveness probe must not restart a capture that is
/// catching up) when the series lag the kernel by more than a few seconds of drops, or
/// per-flow detail was given up to the aggregates within the last minute; `failing` (503)
/// when the kernel's counters cannot be read.
async fn healthz(State(shared): State<SharedState>) -> Response {
    let s = lock(&shared);
    let uptime = s.started.elapsed().as_secs_f64();
    if let Some(h) = s.health.as_ref().filter(|h| h.error.is_some()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "failing",
                "error": h.error,
                "uptime_s": uptime,
            })),
        )
            .into_response();
    }
    let h = s.health.as_ref();
    let mut reasons = Vec::new();
    if s.behind > 0 {
        reasons.push(format!(
            "{} drops counted by the kernel are not in the series yet",
            s.behind
        ));
    }
    if h.is_some_and(|h| h.detail_degraded) {
        reasons.push(
            "more flows than the flow table or the lines a second hold: recent drops are \
             counted by rule and port without addresses or processes"
                .to_string(),
        );
    }
    Json(serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "uptime_s": uptime,
        "drops_reported": h.map_or(0, |h| h.reported),
        "backlog_drops": s.behind,
        "beyond_flow_table_drops": h.map_or(0, |h| h.beyond_flow_table),
        "lines_given_up": h.map_or(0, |h| h.lines_given_up),
        "records_lost": h.and_then(|h| h.records_lost),
    }))
    .into_response()
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        commands::serve::Shared,
        record::tests::sample,
        sinks::{
            metrics::{DropMetrics, MetricsConfig},
            recent::RecentDrops,
        },
    };

    fn shared() -> SharedState {
        let mut metrics = DropMetrics::new(MetricsConfig {
            max_destinations: 10,
            max_ports: 10,
            max_series: 10,
            ttl: Duration::from_secs(60),
            extra: vec![],
            version: "0.1.0".into(),
            capture_mode: "tp_btf/kfree_skb".into(),
        });
        let mut recent = RecentDrops::new(100, Duration::from_secs(3600));
        let now = Instant::now();
        metrics.observe(&sample(), now);
        recent.observe(&sample(), now);
        Arc::new(Mutex::new(Shared {
            metrics,
            recent,
            health: None,
            behind: 0,
            keep_drops: Duration::from_secs(3600),
            started: now,
        }))
    }

    async fn get(uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::builder().uri(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = router(shared())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_in_the_format_asked_for() {
        let (status, ctype, body) = get("/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, PROMETHEUS_TEXT);
        assert!(!body.contains("# EOF"), "{body}");
        let (_, ctype, body) = get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        )
        .await;
        assert_eq!(ctype, OPENMETRICS_TEXT);
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn drops_take_a_duration_and_refuse_anything_else() {
        let (status, _, body) = get("/drops?since=5m", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["since_s"], 300.0);
        assert_eq!(v["drops"][0]["dport"], 8443);
        let (status, _, body) = get("/drops?since=forever", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // Longer than kept: what is kept.
        let (_, _, body) = get("/drops?since=30d", None).await;
        assert!(body.contains(r#""since_s":3600.0"#), "{body}");
    }

    #[tokio::test]
    async fn only_the_three_endpoints_answer() {
        assert_eq!(get("/healthz", None).await.0, StatusCode::OK);
        assert_eq!(get("/", None).await.0, StatusCode::NOT_FOUND);
        let resp = router(shared())
            .oneshot(
                Request::builder()
                    .method("POST")
                    .uri("/metrics")
                    .body(Body::from("x"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
