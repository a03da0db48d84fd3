//! One reader of the transport's connection events. The endpoint broadcasts `Up` and
//! `Down`; this hub is its only subscriber and hands every event on, in order, to each
//! component that asked for them (links, membership, mesh, sync) over a bounded channel
//! of its own. When the broadcast overflowed (the hub fell behind), every component gets
//! [`ConnEvent::Resync`] with the live connections instead of the lost events, in one
//! place instead of five.

use std::sync::Mutex;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::debug;
use transport::{DeviceId, DownReason, Endpoint, PeerConn, TransportEvent};

/// Events queued per component before the hub waits for it.
const QUEUE: usize = 1024;

#[derive(Debug, Clone)]
pub enum ConnEvent {
    /// A connection to the peer is up (again, when a duplicate replaced the old one).
    Up(PeerConn),
    /// The peer has no connection any more.
    Down { peer: DeviceId, reason: DownReason },
    /// Events were lost: these are the live connections now.
    Resync(Vec<PeerConn>),
}

/// The hub (see the module documentation).
#[derive(Default)]
pub struct ConnEvents {
    subscribers: Mutex<Vec<mpsc::Sender<ConnEvent>>>,
}

impl ConnEvents {
    /// A component's queue of events; subscribe before [`ConnEvents::run`] starts to miss
    /// none.
    pub fn subscribe(&self) -> mpsc::Receiver<ConnEvent> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Reads the endpoint's events until it closes, handing each to every subscriber.
    pub async fn run(
        &self,
        endpoint: &Endpoint,
        mut rx: tokio::sync::broadcast::Receiver<TransportEvent>,
    ) {
        loop {
            let ev = match rx.recv().await {
                Ok(TransportEvent::Up(pc)) => ConnEvent::Up(pc),
                Ok(TransportEvent::Down { peer, reason }) => ConnEvent::Down { peer, reason },
                Err(RecvError::Lagged(n)) => {
                    debug!(missed = n, "transport events lagged; resynchronising");
                    ConnEvent::Resync(endpoint.connections())
                }
                Err(RecvError::Closed) => return,
            };
            let subs: Vec<_> = self
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for s in subs {
                // A component that is gone simply misses the rest.
                let _ = s.send(ev.clone()).await;
            }
        }
    }
}
