//! The local side of application streams: services (listeners and exposes, persisted in
//! `STATE_DIR/expose.json`), streams waiting for `accept`, and the status of ended
//! streams. The stream tasks themselves are in `streams.rs`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use transport::quinn::{RecvStream, SendStream};

use tracing::info;

use crate::api::{code, ErrorBody, PeerRef};

/// Longest service name.
pub const MAX_SERVICE: usize = 64;

/// How long an incoming stream waits for a listener's `accept`.
pub const ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// Ended streams whose status is kept for `stream_status`.
const KEEP_ENDED: usize = 4096;

/// File of persistent exposes inside the state directory.
pub const EXPOSE_FILE: &str = "expose.json";

/// Service names: 1-64 of `[A-Za-z0-9_.-]`.
pub fn validate_service(s: &str) -> Result<(), ErrorBody> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SERVICE
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ErrorBody::new(
            code::BAD_REQUEST,
            format!(
                "invalid service name {s:?}: use 1-{MAX_SERVICE} letters, digits, '.', '_' or '-'"
            ),
        ))
    }
}

/// Where an exposed service forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl Target {
    /// `HOST:PORT`, `tcp:HOST:PORT` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Target, ErrorBody> {
        let bad =
            |m: &str| ErrorBody::new(code::INVALID_ADDRESS, format!("invalid target {s:?}: {m}"));
        if s.len() > 1024 {
            return Err(bad("too long"));
        }
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(bad("a UNIX socket path must be absolute"));
            }
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let hp = s.strip_prefix("tcp:").unwrap_or(s);
        match hp.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(Target::Tcp(hp.to_string()))
            }
            _ => Err(bad("expected HOST:PORT or unix:/path")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp:{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An incoming stream announced to a listener.
#[derive(Debug, Clone, Serialize)]
pub struct Announce {
    pub stream: String,
    pub service: String,
    pub peer: PeerRef,
}

pub struct Pending {
    pub send: SendStream,
    pub recv: RecvStream,
    pub created: Instant,
    /// Its place among its peer's streams (budget.rs), given back when it ends.
    pub turn: super::budget::Held,
}

#[derive(Default)]
pub struct Registry {
    pub listeners: HashMap<String, (u64, mpsc::Sender<Announce>)>,
    pub exposes: HashMap<String, (Target, bool)>,
    pub pending: HashMap<String, Pending>,
    pub ended: HashMap<String, String>,
    pub ended_order: VecDeque<String>,
}

/// Services and streams of one daemon.
#[derive(Default)]
pub struct Streams {
    reg: Mutex<Registry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub service: String,
    pub kind: String,
    pub target: Option<String>,
    pub persistent: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredExpose {
    service: String,
    target: Target,
}

impl Streams {
    pub fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads persistent exposes from the state directory and the config.
    pub fn load(
        &self,
        state_dir: &std::path::Path,
        config: &[(String, String)],
    ) -> anyhow::Result<()> {
        let path = state_dir.join(EXPOSE_FILE);
        let mut reg = self.reg();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let stored: Vec<StoredExpose> = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is corrupt: {e}; fix or remove it", path.display())
            })?;
            for s in stored {
                reg.exposes.insert(s.service, (s.target, true));
            }
        }
        for (service, target) in config {
            validate_service(service).map_err(|e| anyhow::anyhow!("config [[expose]]: {e}"))?;
            let t = Target::parse(target)
                .map_err(|e| anyhow::anyhow!("config [[expose]] {service}: {e}"))?;
            reg.exposes.insert(service.clone(), (t, false));
        }
        Ok(())
    }

    fn save(&self, state_dir: &std::path::Path) -> std::io::Result<()> {
        let stored: Vec<StoredExpose> = {
            let reg = self.reg();
            let mut v: Vec<StoredExpose> = reg
                .exposes
                .iter()
                .filter(|(_, (_, persistent))| *persistent)
                .map(|(s, (t, _))| StoredExpose {
                    service: s.clone(),
                    target: t.clone(),
                })
                .collect();
            v.sort_by(|a, b| a.service.cmp(&b.service));
            v
        };
        let path = state_dir.join(EXPOSE_FILE);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(
            &mut f,
            &serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?,
        )?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    pub fn expose(
        &self,
        state_dir: &std::path::Path,
        service: &str,
        target: &str,
    ) -> Result<ServiceInfo, ErrorBody> {
        validate_service(service)?;
        let t = Target::parse(target)?;
        {
            let mut reg = self.reg();
            if reg.listeners.contains_key(service) {
                return Err(ErrorBody::new(
                    code::BAD_REQUEST,
                    format!("service {service:?} has a listener already"),
                ));
            }
            reg.exposes.insert(service.to_string(), (t.clone(), true));
        }
        self.save(state_dir)
            .map_err(|e| ErrorBody::new(code::INTERNAL, e.to_string()))?;
        info!(%service, target = %t, "service exposed");
        Ok(ServiceInfo {
            service: service.into(),
            kind: "expose".into(),
            target: Some(t.to_string()),
            persistent: true,
        })
    }

    pub fn unexpose(&self, state_dir: &std::path::Path, service: &str) -> Result<(), ErrorBody> {
        if self.reg().exposes.remove(service).is_none() {
            return Err(ErrorBody::new(
                code::UNKNOWN_SERVICE,
                format!("no exposed service {service:?}"),
            ));
        }
        self.save(state_dir)
            .map_err(|e| ErrorBody::new(code::INTERNAL, e.to_string()))
    }

    pub fn list(&self) -> Vec<ServiceInfo> {
        let reg = self.reg();
        let mut v: Vec<ServiceInfo> = reg
            .exposes
            .iter()
            .map(|(s, (t, p))| ServiceInfo {
                service: s.clone(),
                kind: "expose".into(),
                target: Some(t.to_string()),
                persistent: *p,
            })
            .chain(reg.listeners.keys().map(|s| ServiceInfo {
                service: s.clone(),
                kind: "listen".into(),
                target: None,
                persistent: false,
            }))
            .collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    /// Registers a listener owned by socket connection `owner`.
    pub fn listen(&self, service: &str, owner: u64) -> Result<mpsc::Receiver<Announce>, ErrorBody> {
        validate_service(service)?;
        let mut reg = self.reg();
        if reg.listeners.contains_key(service) || reg.exposes.contains_key(service) {
            return Err(ErrorBody::new(
                code::BAD_REQUEST,
                format!("service {service:?} is already served here"),
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        reg.listeners.insert(service.to_string(), (owner, tx));
        Ok(rx)
    }

    pub fn unlisten(&self, service: &str, owner: u64) {
        let mut reg = self.reg();
        if reg.listeners.get(service).is_some_and(|(o, _)| *o == owner) {
            reg.listeners.remove(service);
        }
    }

    pub fn take_pending(&self, token: &str) -> Option<Pending> {
        self.reg().pending.remove(token)
    }

    pub fn record_end(&self, token: &str, status: String) {
        let mut reg = self.reg();
        reg.ended.insert(token.to_string(), status);
        reg.ended_order.push_back(token.to_string());
        while reg.ended_order.len() > KEEP_ENDED {
            if let Some(old) = reg.ended_order.pop_front() {
                reg.ended.remove(&old);
            }
        }
    }

    /// "open", "closed" or "error: ..." for a stream token.
    pub fn status(&self, token: &str) -> Option<String> {
        let reg = self.reg();
        reg.ended.get(token).cloned()
    }
}

pub fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}
