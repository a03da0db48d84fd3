//! The dashboard's JSON endpoints. Each answers through the control socket's own
//! command handler (`control::cmd::handle`), so a page sees exactly what `cnspr ... --json`
//! shows; `/api/events` is a server-sent-event stream of the dashboard's feed.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::auth::query_param;
use super::state::Ui;
use crate::api::{code, ErrorBody, Request};
use crate::daemon::control::cmd;

/// Keys listed per page of the store browser.
const KV_PAGE: usize = 100;
/// Longest key or prefix taken from a page (the store's own limit is lower).
const MAX_KEY: usize = 4096;

/// A reply: the command's result, or its error with a status code.
fn reply(res: Result<Value, ErrorBody>) -> Response {
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = if e.code == code::INTERNAL {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, Json(serde_json::json!({"error": e}))).into_response()
        }
    }
}

async fn run(ui: &Ui, req: Request) -> Response {
    reply(cmd::handle(&ui.d, req).await)
}

fn bad(message: &str) -> Response {
    reply(Err(ErrorBody::new(code::BAD_REQUEST, message)))
}

pub async fn status(State(ui): State<Arc<Ui>>) -> Response {
    run(&ui, Request::Status {}).await
}

pub async fn peers(State(ui): State<Arc<Ui>>) -> Response {
    run(&ui, Request::Peers {}).await
}

pub async fn handlers(State(ui): State<Arc<Ui>>) -> Response {
    run(&ui, Request::Handlers {}).await
}

/// `GET /api/kv?prefix=P&after=K`: one page of keys under `P` (`kv.list`).
pub async fn kv_list(State(ui): State<Arc<Ui>>, uri: Uri) -> Response {
    let prefix = query_param(uri.query(), "prefix").unwrap_or_default();
    let after = query_param(uri.query(), "after").filter(|a| !a.is_empty());
    if prefix.len() > MAX_KEY || after.as_ref().is_some_and(|a| a.len() > MAX_KEY) {
        return bad("prefix or key too long");
    }
    let req = Request::KvList {
        prefix: Some(prefix),
        after,
        limit: Some(KV_PAGE),
    };
    run(&ui, req).await
}

/// `GET /api/kv/get?key=K`: the key with every version (`kv.get --all-versions`).
pub async fn kv_get(State(ui): State<Arc<Ui>>, uri: Uri) -> Response {
    let Some(key) = query_param(uri.query(), "key").filter(|k| k.len() <= MAX_KEY) else {
        return bad("give key=KEY");
    };
    run(
        &ui,
        Request::KvGet {
            key,
            all_versions: true,
        },
    )
    .await
}

/// `GET /api/recent`: the events the dashboard kept (oldest first).
pub async fn recent(State(ui): State<Arc<Ui>>) -> Response {
    Json(Value::Array(ui.recent())).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveBody {
    peer: String,
}

/// `POST /api/remove {"peer"}` (`remove`).
pub async fn remove(State(ui): State<Arc<Ui>>, Json(b): Json<RemoveBody>) -> Response {
    run(&ui, Request::Remove { peer: b.peer }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    code: String,
    #[serde(default)]
    addrs: Vec<String>,
}

/// `POST /api/pair/join {"code", "addrs"?}` (`pair.join`).
pub async fn pair_join(State(ui): State<Arc<Ui>>, Json(b): Json<JoinBody>) -> Response {
    let req = Request::PairJoin {
        code: b.code,
        addrs: b.addrs,
        timeout_s: None,
    };
    run(&ui, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBody {
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// `POST /api/pair/open {"timeout_s"?}`: opens a window (as `pair`); its changes come on
/// the feed.
pub async fn pair_open(State(ui): State<Arc<Ui>>, Json(b): Json<OpenBody>) -> Response {
    reply(ui.pairing.open(&ui.d, b.timeout_s, ui.feed.clone()))
}

/// `POST /api/pair/cancel`: closes the dashboard's window.
pub async fn pair_cancel(State(ui): State<Arc<Ui>>) -> Response {
    Json(serde_json::json!({"cancelled": ui.pairing.cancel()})).into_response()
}

/// `GET /api/pair`: the dashboard's window (`null` before any).
pub async fn pair_state(State(ui): State<Arc<Ui>>) -> Response {
    Json(ui.pairing.state()).into_response()
}

/// `GET /api/pair/qr.svg`: the open window's code as a QR code.
pub async fn pair_qr(State(ui): State<Arc<Ui>>) -> Response {
    let Some(code) = ui.pairing.open_code() else {
        return (StatusCode::NOT_FOUND, "no pairing window is open").into_response();
    };
    match super::qr::svg(&code) {
        Ok(svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `GET /api/events`: the feed as server-sent events, one JSON object per event. A page
/// that falls more than the feed's buffer behind gets `{"kind": "lagged"}` and should
/// reload its lists.
pub async fn events(State(ui): State<Arc<Ui>>) -> impl IntoResponse {
    let rx = ui.feed.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data: Arc<str> = match rx.recv().await {
            Ok(t) => t,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Arc::from(serde_json::json!({"kind": "lagged", "missed": n}).to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(SseEvent::default().data(&*data)), rx))
    });
    // Keep-alives well within the connection's idle limit (limit.rs).
    Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
}
