//! Command-line definitions (every command, in docs/api.md and the manual pages).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cnspr",
    version,
    about = "A private, decentralized mesh of your own devices",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// State directory (identity, trusted peers)
    #[arg(long, global = true, env = "CNSPR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control socket of the daemon
    #[arg(long, global = true, env = "CNSPR_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file (TOML)
    #[arg(long, global = true, env = "CNSPR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon
    Serve(ServeArgs),
    /// Create this device's identity if missing (idempotent)
    Init {
        /// Human name of this device (default: the host name)
        #[arg(long)]
        name: Option<String>,
    },
    /// Show this device's ID and name (works without a daemon)
    Id,
    /// Show the daemon's status
    Status,
    /// List peers with state, address, latency
    Peers,
    /// Measure the round trip to a peer
    Ping {
        /// Peer name or ID prefix
        peer: String,
        /// How long to wait, in seconds
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Send a tagged message that runs handlers on the receiving device
    Send(SendArgs),
    /// Print events (peer changes, messages, daemon events) as they happen; exits 1 when
    /// the daemon stops
    Monitor {
        /// Only these event kinds (message, peer, daemon); repeatable
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
    },
    /// List the handlers found and what each matches; `install NAME` adds a ready-made one
    Handlers {
        #[command(subcommand)]
        action: Option<HandlersAction>,
    },
    /// Trust a device by its ID
    Trust {
        /// The device's ID (grouped or not, any case)
        id: String,
        /// Name to show until the device tells its own
        #[arg(long)]
        name: Option<String>,
        /// An address where the device listens; repeatable
        #[arg(long = "addr", value_name = "HOST:PORT")]
        addrs: Vec<String>,
        /// Rename a device already trusted to --name (otherwise it keeps its name)
        #[arg(long, requires = "name")]
        rename: bool,
    },
    /// Pair with a device on the LAN: without CODE, open a pairing window and show a
    /// one-time code (and the devices nearby); with CODE, join the device showing it
    Pair {
        /// The code shown by `cnspr pair` on the other device
        code: Option<String>,
        /// Address of the other device's pairing window, where multicast does not work
        /// (shown by `cnspr pair`); repeatable
        #[arg(long = "addr", value_name = "HOST:PORT")]
        addrs: Vec<String>,
        /// Seconds the window stays open (default 120), or to find and join one (default 30)
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Revoke a device everywhere in the mesh (lost device): every member closes its
    /// connection and refuses it from then on, also members that are offline now
    Remove {
        /// Peer name or ID prefix
        peer: String,
        /// Do not ask for confirmation (asked only when standard input is a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Stop the daemon gracefully (peers see it as left)
    Stop,
    /// Print the local web dashboard's URL (with its token) and open it in a browser when
    /// there is a display; starts the dashboard if config `ui` did not
    Ui {
        /// Only print the URL
        #[arg(long)]
        no_open: bool,
    },
    /// Open a byte stream to SERVICE on PEER over standard input/output (usable as an
    /// ssh ProxyCommand)
    Connect {
        /// Peer name or ID prefix
        peer: String,
        /// Service name on the peer
        service: String,
        /// Show bytes and rate on standard error (when standard output is not a terminal)
        #[arg(long)]
        progress: bool,
        /// Give up opening the stream after this many seconds
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
    /// Serve SERVICE: one stream on standard input/output, or each stream with --exec CMD
    /// until interrupted
    Listen {
        /// Service name
        service: String,
        /// Run CMD (with sh -c) for each stream, the stream on its standard input/output;
        /// serves every stream until interrupted (Ctrl-C)
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// With --exec: serve every stream (the default; kept for scripts that give it)
        #[arg(long, conflicts_with = "once")]
        keep: bool,
        /// With --exec: serve one stream, then exit with CMD's exit status
        #[arg(long)]
        once: bool,
    },
    /// Forward streams for SERVICE to a local TCP HOST:PORT or unix:/path (persistent);
    /// without arguments, list the services
    Expose {
        /// Service name
        service: Option<String>,
        /// HOST:PORT or unix:/path
        target: Option<String>,
        /// Stop exposing SERVICE
        #[arg(long)]
        remove: bool,
    },
    /// The replicated key-value store (durable on this device, synced with every member)
    #[command(subcommand)]
    Kv(KvCommand),
    /// Run a relay for devices behind NATs (on a host with a public address; it is not
    /// a member and sees only encrypted packets); with a subcommand, manage this mesh's
    /// relays
    Relay(RelayArgs),
    /// Wake a sleeping peer: a member on its LAN sends a Wake-on-LAN magic packet
    Wake {
        /// Peer name or ID prefix
        peer: String,
        /// Send even when the peer looks awake
        #[arg(long)]
        force: bool,
    },
    /// Print shell completions
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub action: Option<RelayAction>,
    /// UDP address to listen on (default [::]:7374)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// TCP address for networks that drop UDP (default: the UDP address; `off`: none)
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub tcp: Option<String>,
    /// The relay's secret (default: a new one, printed; keep it to restart the relay)
    #[arg(long, env = "CNSPR_RELAY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Most devices registered at once
    #[arg(long, default_value_t = 4096)]
    pub max_devices: usize,
    /// MiB per second one device may send through the relay (0: no limit)
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
}

#[derive(Debug, Subcommand)]
pub enum HandlersAction {
    /// Copy a ready-made handler into the handler directory (without NAME: list them)
    Install {
        /// notify, clipboard, open-url, file, ring or battery
        name: Option<String>,
        /// Replace files already there
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RelayAction {
    /// Record a relay in the mesh's signed roster: every device registers with it
    Add {
        /// HOST:PORT of the relay
        addr: String,
        /// The secret the relay printed at start
        secret: String,
    },
    /// Stop using a relay, everywhere in the mesh
    Remove {
        /// HOST:PORT as added
        addr: String,
    },
    /// The mesh's relays and this device's registration with each
    List,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; repeatable (default [::]:7373 and 0.0.0.0:7373)
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Human name of this device
    #[arg(long)]
    pub name: Option<String>,
    /// Handler directory
    #[arg(long, value_name = "DIR")]
    pub handlers: Option<PathBuf>,
    /// Do not use mDNS
    #[arg(long)]
    pub no_mdns: bool,
    /// Do not ask the router to forward a port (PCP, NAT-PMP)
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Address of a peer to dial (networks without multicast); repeatable
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Peer name or ID prefix (omit with --all)
    #[arg(required_unless_present = "all")]
    pub peer: Option<String>,
    /// Tag, e.g. util.clipboard.set
    pub tag: Option<String>,
    /// Message body; standard input when absent or `-`
    pub message: Option<String>,
    /// Send to every member
    #[arg(long)]
    pub all: bool,
    /// Wait for the handlers and print their output and exit status
    #[arg(long)]
    pub reply: bool,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Store VALUE (or standard input when absent or `-`) under KEY
    Put {
        key: String,
        value: Option<String>,
        /// Only if KEY's current version is VERSION (the `version` that `kv get --json`
        /// printed); exit 3 with `conflict` otherwise
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_version: Option<String>,
        /// Only if KEY has no value; exit 3 with `conflict` otherwise
        #[arg(long)]
        if_absent: bool,
    },
    /// Print the value of KEY (bytes unchanged; exit 1 when absent)
    Get {
        key: String,
        /// Also show the concurrent versions that lost
        #[arg(long)]
        all_versions: bool,
    },
    /// Delete KEY
    Del {
        key: String,
        /// Only if KEY's current version is VERSION; exit 3 with `conflict` otherwise
        #[arg(long, value_name = "VERSION")]
        if_version: Option<String>,
    },
    /// List keys starting with PREFIX
    List { prefix: Option<String> },
    /// Add N (default 1; negative subtracts) to the counter KEY; prints its value. Counts
    /// made on devices that were apart all add up once they meet
    Incr {
        key: String,
        #[arg(allow_negative_numbers = true)]
        n: Option<i64>,
    },
    /// Write several keys at once, all or nothing: one operation per line from FILE (or
    /// standard input when absent or `-`): `put KEY VALUE`, `put-b64 KEY BASE64`,
    /// `del KEY`, or a JSON object as `kv.batch` takes it; exit 3 on a conflict
    Batch { file: Option<String> },
    /// Print changes under PREFIX as they happen (history first, unless --from); exits 1
    /// when the daemon stops
    Watch {
        prefix: Option<String>,
        /// Start after this change-feed sequence number (resume after a restart)
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
    },
}

/// A `--timeout SECONDS` argument in milliseconds; refused unless more than 0 and at most
/// an hour.
pub fn secs_to_ms(s: f64) -> anyhow::Result<u64> {
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        anyhow::bail!("--timeout must be more than 0 and at most 3600 seconds (got {s})");
    }
    Ok((s * 1000.0).round() as u64)
}
