//! Following a stream of lines from the daemon (`monitor`, `kv watch`).

use std::io::Write;

use serde_json::Value;

use crate::api::Event;
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

pub fn describe_event(v: &Value) -> String {
    match serde_json::from_value::<Event>(v.clone()) {
        Ok(Event::Message {
            tag,
            from,
            message_id,
            body_len,
            ..
        }) => format!(
            "message  {tag} from {} ({body_len} bytes, id {message_id})",
            from.name
        ),
        Ok(Event::Peer {
            tag,
            peer,
            state,
            address,
            path,
            detail,
        }) => format!(
            "peer     {tag} {} {state}{}{}{}",
            peer.name,
            address.map(|a| format!(" {a}")).unwrap_or_default(),
            path.map(|p| format!(" ({})", crate::output::path_text(&p)))
                .unwrap_or_default(),
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        ),
        Ok(Event::Daemon { tag, state }) => format!("daemon   {tag} {state}"),
        Err(_) => v.to_string(),
    }
}
