//! The configuration file (TOML). Every key is documented in `docs/config.md`; unknown
//! keys are refused with the key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Largest config file read, in bytes.
pub const MAX_CONFIG: u64 = 1024 * 1024;

/// Default membership probe interval (ms).
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 550;
/// Default time after which a silent peer is declared unreachable (ms).
pub const DEFAULT_SUSPECT_AFTER_MS: u64 = 1650;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Human name of this device.
    pub name: Option<String>,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Handler directory.
    pub handlers: Option<PathBuf>,
    /// LAN discovery with mDNS.
    pub mdns: bool,
    /// Peer addresses to dial (HOST:PORT).
    pub peers: Vec<String>,
    /// Handler timeout in seconds.
    pub handler_timeout_s: f64,
    /// Handlers running at once.
    pub handler_concurrency: usize,
    /// Handler invocations admitted (running + waiting) before senders get `queue_full`.
    pub handler_queue: usize,
    /// Liveness probe interval, milliseconds.
    pub probe_interval_ms: u64,
    /// A peer unanswered for this long is `suspect`, milliseconds.
    pub suspect_after_ms: u64,
    /// A connection silent for this long is dead (`unreachable`), milliseconds.
    pub idle_timeout_ms: u64,
    /// Longest wait between two dials of an unreachable peer, milliseconds.
    pub max_backoff_ms: u64,
    /// Liveness beats as heartbeats beside QUIC (false: over QUIC, more wake-ups).
    pub heartbeats: bool,
    /// Services forwarded to local addresses (`[[expose]]` tables).
    pub expose: Vec<ExposeEntry>,
    /// Ask the router (PCP, NAT-PMP) to forward the listening port, so that devices
    /// beyond the LAN can dial this one (docs/reach.md).
    pub port_mapping: bool,
    /// Members pass packets on for each other: this device passes them on between two
    /// members it is connected to, and has its own to peers reached only through a member
    /// passed on by that member (docs/reach.md).
    pub relay_packets: bool,
    /// Serve the local web dashboard (src/ui/, docs/ui.md) from the start; `cnspr ui`
    /// starts it anyway when asked.
    pub ui: bool,
    /// The dashboard's port on 127.0.0.1 and ::1 (0: one the kernel picks).
    pub ui_port: u16,
    /// How closely this device is watched (docs/membership.md, "Battery profile"):
    /// `auto` (battery while running on battery, read from /sys/class/power_supply),
    /// `battery` or `mains`.
    pub profile: Profile,
}

/// The power profile (`profile` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Auto,
    Battery,
    Mains,
}

/// One `[[expose]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeEntry {
    pub service: String,
    /// `HOST:PORT` or `unix:/path`.
    pub target: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            listen: Vec::new(),
            handlers: None,
            mdns: true,
            peers: Vec::new(),
            handler_timeout_s: 30.0,
            handler_concurrency: 8,
            handler_queue: 256,
            probe_interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            suspect_after_ms: DEFAULT_SUSPECT_AFTER_MS,
            idle_timeout_ms: 3000,
            max_backoff_ms: 5000,
            heartbeats: true,
            expose: Vec::new(),
            port_mapping: true,
            relay_packets: true,
            ui: false,
            ui_port: 0,
            profile: Profile::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Loads `path`. A missing file gives the defaults unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        if meta.len() > MAX_CONFIG {
            return Err(ConfigError::TooLarge { path: path.into() });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| {
            Err(ConfigError::Invalid {
                path: PathBuf::new(),
                message: m.to_string(),
            })
        };
        if !(self.handler_timeout_s > 0.0 && self.handler_timeout_s <= 86_400.0) {
            return bad("handler_timeout_s must be between 0 and 86400");
        }
        if self.handler_concurrency == 0 || self.handler_concurrency > 1024 {
            return bad("handler_concurrency must be between 1 and 1024");
        }
        if self.handler_queue == 0 || self.handler_queue > 100_000 {
            return bad("handler_queue must be between 1 and 100000");
        }
        if self.probe_interval_ms < 50 || self.probe_interval_ms > 60_000 {
            return bad("probe_interval_ms must be between 50 and 60000");
        }
        // The membership core's relations (membership::Config::validate, with its probe
        // timeouts): a peer must get the chance to be suspect before it is declared
        // unreachable.
        let core = membership::Config::default();
        let (t, t_max) = (
            core.probe_timeout.as_millis() as u64,
            core.probe_timeout_max.as_millis() as u64,
        );
        let p = self.probe_interval_ms;
        if self.suspect_after_ms <= (2 * p + t).max(p + t_max) {
            return bad(&format!(
                "suspect_after_ms must be larger than 2 x probe_interval_ms + {t} \
                 and than probe_interval_ms + {t_max}"
            ));
        }
        if self.idle_timeout_ms <= self.suspect_after_ms || self.idle_timeout_ms > 600_000 {
            return bad("idle_timeout_ms must be larger than suspect_after_ms and at most 600000");
        }
        if self.max_backoff_ms < 100 || self.max_backoff_ms > 3_600_000 {
            return bad("max_backoff_ms must be between 100 and 3600000");
        }
        if let Some(n) = &self.name {
            if transport::identity::validate_name(n).is_err() {
                return bad("name: use 1-64 letters, digits, '-' and '_'");
            }
        }
        Ok(())
    }

    pub fn handler_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handler_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_keys() {
        let c = Config::parse("").unwrap();
        assert!(c.mdns);
        let c = Config::parse(
            "name = \"desk\"\nlisten = [\"127.0.0.1:7000\"]\nhandler_timeout_s = 2.5\npeers = [\"10.0.0.2:7373\"]\n",
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("desk"));
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.handler_timeout(), Duration::from_millis(2500));
    }

    #[test]
    fn dashboard_keys() {
        let c = Config::parse("").unwrap();
        assert!(!c.ui);
        assert_eq!(c.ui_port, 0);
        let c = Config::parse("ui = true\nui_port = 8123\n").unwrap();
        assert!(c.ui);
        assert_eq!(c.ui_port, 8123);
        assert!(Config::parse("ui_port = 70000").is_err());
        assert!(Config::parse("ui = \"yes\"").is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("nmae = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("nmae"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::parse("handler_concurrency = 0").is_err());
        assert!(Config::parse("listen = [\"nonsense\"]").is_err());
        assert!(Config::parse("name = \"a b\"").is_err());
        assert!(Config::parse("suspect_after_ms = 10").is_err());
        assert!(Config::parse("handler_timeout_s = \"x\"").is_err());
    }
}
