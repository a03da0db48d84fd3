//! Where the state directory, the control socket and the config file live.

use std::path::{Path, PathBuf};

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

fn home() -> PathBuf {
    env_dir("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// `$XDG_DATA_HOME/cnspr`, else `~/.local/share/cnspr`.
pub fn default_state_dir() -> PathBuf {
    env_dir("XDG_DATA_HOME")
        .unwrap_or_else(|| home().join(".local/share"))
        .join("cnspr")
}

/// `$XDG_CONFIG_HOME/cnspr`, else `~/.config/cnspr`.
pub fn config_home() -> PathBuf {
    env_dir("XDG_CONFIG_HOME")
        .unwrap_or_else(|| home().join(".config"))
        .join("cnspr")
}

/// `$XDG_CONFIG_HOME/cnspr/config.toml`.
pub fn default_config() -> PathBuf {
    config_home().join("config.toml")
}

/// `$XDG_CONFIG_HOME/cnspr/handlers`.
pub fn default_handlers() -> PathBuf {
    config_home().join("handlers")
}

/// `$XDG_RUNTIME_DIR/cnspr/cnspr.sock`, else `STATE_DIR/cnspr.sock`.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    match env_dir("XDG_RUNTIME_DIR") {
        Some(run) => run.join("cnspr").join("cnspr.sock"),
        None => state_dir.join("cnspr.sock"),
    }
}

/// The resolved locations for one invocation.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// Whether the config path was given explicitly (then it must exist).
    pub config_explicit: bool,
}

impl Paths {
    pub fn resolve(
        state_dir: Option<PathBuf>,
        socket: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Self {
        let state_dir = state_dir.unwrap_or_else(default_state_dir);
        let socket = socket.unwrap_or_else(|| default_socket(&state_dir));
        let config_explicit = config.is_some();
        let config = config.unwrap_or_else(default_config);
        Paths {
            state_dir,
            socket,
            config,
            config_explicit,
        }
    }
}
