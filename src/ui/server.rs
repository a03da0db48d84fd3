//! The dashboard's HTTP server: binds loopback only (127.0.0.1 and ::1), guards every
//! request (`Host`, token cookie, CSRF and `Origin` for `POST`), and serves the page's
//! three assets, compiled into the binary, and the JSON API (`api.rs`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::api;
use super::auth::{self, query_param, Keys};
use super::limit::{Limited, MAX_CONNECTIONS};
use super::slot::Running;
use super::state::{follow_events, follow_runs, Ui};
use crate::daemon::context::Daemon;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
/// Where the page's CSRF value is written into `index.html`.
const CSRF_MARK: &str = "{{CSRF}}";

/// Every response's security headers: nothing from outside, no framing, no sniffing,
/// nothing cached, no referrer (the first URL holds the token).
const HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// Starts the dashboard once per daemon run (later calls give the same URL). `port` 0:
/// a port the kernel picks.
pub async fn ensure(d: &Arc<Daemon>, port: u16) -> anyhow::Result<Running> {
    let mut slot = d.ui.running.lock().await;
    if let Some(r) = slot.as_ref() {
        return Ok(r.clone());
    }
    let r = start(d, port).await?;
    info!(port = r.port, listen = ?r.listen, "web dashboard running (`cnspr ui` gives its URL)");
    *slot = Some(r.clone());
    Ok(r)
}

async fn start(d: &Arc<Daemon>, port: u16) -> anyhow::Result<Running> {
    let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| anyhow::anyhow!("web dashboard: cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = v4.local_addr()?.port();
    let mut listeners = vec![v4];
    match TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await {
        Ok(l) => listeners.push(l),
        Err(e) => debug!(error = %e, "web dashboard: not on [::1]"),
    }
    let listen = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let keys = Keys::generate()?;
    let url = format!("http://127.0.0.1:{port}/?token={}", keys.token());
    let ui = Ui::new(d.clone(), keys, port);
    tokio::spawn(follow_events(ui.clone()));
    tokio::spawn(follow_runs(ui.clone()));
    let app = router(ui);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    for inner in listeners {
        let app = app.clone();
        let l = Limited {
            inner,
            slots: slots.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                warn!(error = %e, "web dashboard stopped");
            }
        });
    }
    Ok(Running { url, port, listen })
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/api/status", get(api::status))
        .route("/api/peers", get(api::peers))
        .route("/api/handlers", get(api::handlers))
        .route("/api/kv", get(api::kv_list))
        .route("/api/kv/get", get(api::kv_get))
        .route("/api/recent", get(api::recent))
        .route("/api/events", get(api::events))
        .route("/api/remove", post(api::remove))
        .route("/api/pair", get(api::pair_state))
        .route("/api/pair/qr.svg", get(api::pair_qr))
        .route("/api/pair/open", post(api::pair_open))
        .route("/api/pair/cancel", post(api::pair_cancel))
        .route("/api/pair/join", post(api::pair_join))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn index(State(ui): State<Arc<Ui>>) -> Response {
    let page = INDEX.replace(CSRF_MARK, ui.keys.csrf());
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("forbidden: {why}\n"),
    )
        .into_response()
}

fn text(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The answer to a request that may not reach its route (`None`: it may).
fn refusal(ui: &Ui, req: &Request) -> Option<Response> {
    let h = req.headers();
    let Some(host) = text(h, header::HOST).filter(|host| auth::host_ok(Some(host), ui.port)) else {
        return Some(forbidden(
            "unknown Host (the dashboard answers only on loopback)",
        ));
    };
    if req.uri().path() == "/" && req.method() == Method::GET {
        if let Some(t) = query_param(req.uri().query(), "token") {
            if !ui.keys.is_token(&t) {
                return Some(forbidden("wrong token: open the URL `cnspr ui` prints"));
            }
            // The token moves into the cookie and out of the address bar.
            let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            if let Ok(v) = HeaderValue::from_str(&ui.keys.cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return Some(r);
        }
    }
    if !ui.keys.cookie_ok(text(h, header::COOKIE)) {
        return Some(forbidden("no token: open the URL `cnspr ui` prints"));
    }
    match *req.method() {
        Method::GET | Method::HEAD => None,
        Method::POST => {
            if !auth::origin_ok(text(h, header::ORIGIN), host) {
                return Some(forbidden("cross-origin request"));
            }
            let csrf = h.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !csrf.is_some_and(|c| ui.keys.is_csrf(c)) {
                return Some(forbidden("missing or wrong CSRF header"));
            }
            None
        }
        _ => Some((StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n").into_response()),
    }
}

async fn guard(State(ui): State<Arc<Ui>>, req: Request, next: Next) -> Response {
    let mut r = match refusal(&ui, &req) {
        None => next.run(req).await,
        Some(r) => r,
    };
    for (k, v) in HEADERS {
        r.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    r
}
