//! Where the daemon keeps its dashboard server once started (at start-up with config
//! `ui = true`, or by the socket request `ui`): started at most once per daemon run.

/// The running server, as `cnspr ui` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Running {
    /// `http://127.0.0.1:PORT/?token=...`: opens the dashboard (and sets its cookie).
    pub url: String,
    pub port: u16,
    /// The loopback addresses really bound.
    pub listen: Vec<String>,
}

/// Holds the server once it runs. An async mutex: two `ui` requests at once start one.
#[derive(Debug, Default)]
pub struct Slot {
    pub running: tokio::sync::Mutex<Option<Running>>,
}
