//! The incoming-stream dispatcher: every QUIC stream a peer opens goes to the component
//! that serves its kind.

use std::sync::Arc;

use tracing::debug;
use transport::StreamKind;

use super::context::Daemon;

/// Serves the endpoint's incoming streams until it closes.
pub fn start(d: &Arc<Daemon>) {
    let Some(mut incoming) = d.endpoint.take_incoming() else {
        return;
    };
    let d = d.clone();
    tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            match s.kind {
                StreamKind::Control => {
                    tokio::spawn(super::links::serve_control(d.clone(), s));
                }
                StreamKind::Message => {
                    tokio::spawn(super::inbox::receive(d.clone(), s));
                }
                StreamKind::App => {
                    tokio::spawn(super::streams::serve(d.clone(), s));
                }
                StreamKind::Messages => {
                    tokio::spawn(super::inbox::serve_lane(d.clone(), s));
                }
                StreamKind::Mesh => {
                    tokio::spawn(super::mesh::serve(d.clone(), s));
                }
                StreamKind::Sync => {
                    tokio::spawn(super::sync::serve(d.clone(), s));
                }
                other => {
                    debug!(?other, "stream kind not served by this version; resetting");
                    let mut s = s;
                    let _ = s.send.reset(1u32.into());
                }
            }
        }
    });
}
