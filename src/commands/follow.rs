//! Following a stream of lines from the daemon (`monitor`, `kv watch`).

use std::io::Write;

use serde_json::Value;

use crate::cli::Global;
use crate::client::Client;

/// Prints each line the daemon sends (as JSON with `--json`, else through `human`) until
/// it ends. A stream never ends well: an `error` line from the daemon, or the daemon
/// closing the connection (it stopped), is an error (exit 1 with the reason).
pub fn follow(c: &mut Client, g: &Global, human: impl Fn(&Value) -> String) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    while let Some(v) = c.next_line()? {
        if v["event"] == "error" {
            anyhow::bail!(
                "{}",
                v["message"]
                    .as_str()
                    .unwrap_or("the daemon ended the stream with an error")
            );
        }
        let mut out = stdout.lock();
        if g.json {
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        } else {
            writeln!(out, "{}", human(&v))?;
        }
        out.flush()?;
    }
    anyhow::bail!("the daemon closed the connection: it stopped")
}
