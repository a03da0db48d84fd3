//! The dashboard server's shared state, and the feed of what pages are told live: the
//! daemon's events (the same stream `subscribe` gives, stamped with the time the
//! dashboard took them) and the pairing window's updates.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

use super::auth::Keys;
use super::clock::now_ms;
use super::pairing::Pairing;
use crate::daemon::context::Daemon;

/// Events kept for a page that opens (newest last).
pub const RECENT: usize = 200;
/// Feed items buffered for a slow page; one that falls further behind is told to reload.
const FEED: usize = 1024;

pub struct Ui {
    pub d: Arc<Daemon>,
    pub keys: Keys,
    pub port: u16,
    /// JSON texts, one per item (`{"kind": "event"|"pair", ...}`).
    pub feed: broadcast::Sender<Arc<str>>,
    pub recent: Mutex<VecDeque<Arc<str>>>,
    pub pairing: Arc<Pairing>,
}

impl Ui {
    pub fn new(d: Arc<Daemon>, keys: Keys, port: u16) -> Arc<Ui> {
        let (feed, _) = broadcast::channel(FEED);
        Arc::new(Ui {
            d,
            keys,
            port,
            feed,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            pairing: Arc::default(),
        })
    }

    /// Sends one item to every open page (none open: nothing happens).
    pub fn publish(&self, item: &Value) {
        let _ = self.feed.send(Arc::from(item.to_string()));
    }

    pub fn recent(&self) -> Vec<Value> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect()
    }
}

/// Takes the daemon's events (as `subscribe` does) into the feed and the recent list,
/// until the daemon's event channel closes. Sleeps while no event comes.
pub async fn follow_events(ui: Arc<Ui>) {
    let mut rx = ui.d.events.subscribe();
    loop {
        let item = match rx.recv().await {
            Ok(ev) => serde_json::json!({"kind": "event", "at_ms": now_ms(), "event": &*ev}),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                serde_json::json!({"kind": "lagged", "at_ms": now_ms(), "missed": n})
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        ui.keep(&item);
    }
}

/// Takes every handler run (exit code, time-out, duration) into the feed and the recent
/// list, like the events.
pub async fn follow_runs(ui: Arc<Ui>) {
    let mut rx = ui.d.runner.runs();
    loop {
        let item = match rx.recv().await {
            Ok(run) => serde_json::json!({"kind": "run", "at_ms": now_ms(), "run": run}),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                serde_json::json!({"kind": "lagged", "at_ms": now_ms(), "missed": n})
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        ui.keep(&item);
    }
}

impl Ui {
    /// Keeps `item` in the recent list and sends it to every open page.
    fn keep(&self, item: &Value) {
        let text: Arc<str> = Arc::from(item.to_string());
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(text.clone());
        }
        let _ = self.feed.send(text);
    }
}
