//! Following a stream of lines from the daemon (`monitor`, `kv watch`).

use std::io::Write;

use serde_json::Value;

use crate::cli::Global;
use crate::client::Client;

/// Prints each line the daemon sends (as JSON with `--json`, else through `human`) until
/// it ends.
pub fn follow(c: &mut Client, g: &Global, human: impl Fn(&Value) -> String) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    while let Some(v) = c.next_line()? {
        let mut out = stdout.lock();
        if g.json {
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        } else {
            writeln!(out, "{}", human(&v))?;
        }
        out.flush()?;
    }
    Ok(())
}
