//! A pairing window opened from the dashboard: the same window as the socket's `pair`
//! (daemon::pair::open), held by the dashboard until it closes, its state shown to every
//! page (code, QR code, failed attempts, outcome).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::api::ErrorBody;
use crate::daemon::context::Daemon;
use crate::daemon::pair::{self, Update};

/// What a page shows of the dashboard's pairing window.
#[derive(Default)]
struct Shown {
    /// `null` before any window; else `{"state": "open"|"paired"|"failed"|"cancelled",
    /// "code", "expires_in_s", "addresses", "attempts": [..], "paired"?, "error"?}`.
    state: Value,
    cancel: Option<watch::Sender<bool>>,
}

#[derive(Default)]
pub struct Pairing {
    shown: Mutex<Shown>,
}

impl Pairing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window's state as pages show it (`null` before any).
    pub fn state(&self) -> Value {
        self.lock().state.clone()
    }

    /// The code of the open window, if one is open.
    pub fn open_code(&self) -> Option<String> {
        let s = self.lock();
        (s.state["state"] == "open")
            .then(|| s.state["code"].as_str().map(str::to_string))
            .flatten()
    }

    /// Closes the open window, if any; true when there was one.
    pub fn cancel(&self) -> bool {
        match self.lock().cancel.take() {
            Some(c) => {
                let _ = c.send(true);
                true
            }
            None => false,
        }
    }

    /// Opens a window for `timeout_s` seconds (1 to 3600, default 120) and follows it in
    /// a task that tells `feed` each change. Errors as the socket's `pair` (`busy`).
    pub fn open(
        self: &Arc<Self>,
        d: &Arc<Daemon>,
        timeout_s: Option<u64>,
        feed: broadcast::Sender<Arc<str>>,
    ) -> Result<Value, ErrorBody> {
        let lifetime = timeout_s.map_or(pair::DEFAULT_WINDOW, |s| {
            Duration::from_secs(s.clamp(1, 3600))
        });
        let mut window = pair::open(d, lifetime)?;
        let mut state = serde_json::to_value(&window.info).unwrap_or(Value::Null);
        state["state"] = "open".into();
        state["attempts"] = Value::Array(Vec::new());
        {
            let mut s = self.lock();
            s.state = state.clone();
            s.cancel = Some(window.cancel.clone());
        }
        publish(&feed, &state);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let u = window.next_update().await;
                let state = {
                    let mut s = me.lock();
                    match u {
                        Update::Attempt(a) => {
                            if let Some(list) = s.state["attempts"].as_array_mut() {
                                list.push(serde_json::to_value(&a).unwrap_or(Value::Null));
                            }
                        }
                        Update::Done(Ok(p)) => {
                            s.state["state"] = "paired".into();
                            s.state["paired"] = serde_json::to_value(&p).unwrap_or(Value::Null);
                            s.cancel = None;
                        }
                        Update::Done(Err(e)) => {
                            let cancelled = e.code == crate::api::code::CANCELLED;
                            s.state["state"] =
                                if cancelled { "cancelled" } else { "failed" }.into();
                            s.state["error"] = serde_json::to_value(&e).unwrap_or(Value::Null);
                            s.cancel = None;
                        }
                    }
                    s.state.clone()
                };
                publish(&feed, &state);
                if state["state"] != "open" {
                    return;
                }
            }
        });
        Ok(state)
    }
}

fn publish(feed: &broadcast::Sender<Arc<str>>, state: &Value) {
    let item = serde_json::json!({"kind": "pair", "at_ms": super::clock::now_ms(), "pair": state});
    let _ = feed.send(Arc::from(item.to_string()));
}
