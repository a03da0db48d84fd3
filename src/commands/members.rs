//! `cnspr trust` and `cnspr remove` (asks first on a terminal: removal is final).

use std::io::{BufRead, IsTerminal, Write};

use serde_json::Value;

use crate::api::{PeerInfo, Request};
use crate::cli::Global;
use crate::client::Client;
use crate::output::print_json;

/// Trusts `id`; a device already trusted keeps its name unless `rename`.
pub fn trust(
    c: &mut Client,
    g: &Global,
    id: String,
    name: Option<String>,
    addrs: Vec<String>,
    rename: bool,
) -> anyhow::Result<i32> {
    if rename && name.is_none() {
        anyhow::bail!("--rename needs --name NAME (the new name)");
    }
    let wanted = name.clone();
    let v = c.request(&Request::Trust {
        device: id,
        name,
        addrs,
        rename,
    })?;
    if g.json {
        return print_json(&v).map(|_| 0);
    }
    println!("{}", trust_line(&v, wanted.as_deref()));
    Ok(0)
}

/// What `trust` did, for people.
fn trust_line(v: &Value, wanted: Option<&str>) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let (name, id) = (s("name"), s("id"));
    if let Some(old) = v["renamed_from"].as_str() {
        return format!("renamed {old} to {name} ({id})");
    }
    if v["already_trusted"].as_bool() != Some(true) {
        return format!("trusted {name} ({id})");
    }
    match wanted {
        Some(w) if w != name => {
            format!("already trusted as {name} ({id}); not renamed (add --rename to call it {w})")
        }
        _ => format!("already trusted as {name} ({id})"),
    }
}

/// Removes `peer`; on a terminal asks for confirmation unless `yes`. Returns the exit
/// code: 1 when the answer was not yes.
pub fn remove(c: &mut Client, g: &Global, peer: String, yes: bool) -> anyhow::Result<i32> {
    if !yes && std::io::stdin().is_terminal() {
        if !confirm(c, &peer)? {
            eprintln!("not removed");
            return Ok(1);
        }
        // The answer may have taken a while.
        c.reconnect()?;
    }
    let v = c.request(&Request::Remove { peer })?;
    if g.json {
        return print_json(&v).map(|_| 0);
    }
    println!(
        "removed {} ({})",
        v["removed"]["name"].as_str().unwrap_or(""),
        v["removed"]["id"].as_str().unwrap_or("")
    );
    for n in v["restored"].as_array().into_iter().flatten() {
        println!(
            "trusted again: {} (a removal signed by the removed device no longer counts)",
            n.as_str().unwrap_or("")
        );
    }
    let kept: Vec<&str> = v["kept"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .collect();
    if !kept.is_empty() {
        println!(
            "still members, signed for by this device now (only {} had signed for them): {}; if it was stolen, remove any of them you do not know",
            v["removed"]["name"].as_str().unwrap_or(""),
            kept.join(", ")
        );
    }
    Ok(0)
}

/// Asks on the terminal whether to remove `peer` (named as the daemon knows it).
fn confirm(c: &mut Client, peer: &str) -> anyhow::Result<bool> {
    let peers: Vec<PeerInfo> = serde_json::from_value(c.request(&Request::Peers {})?)?;
    let live = |p: &&PeerInfo| p.state != "removed";
    // A device in a conflict is named too: removing it is how the conflict is decided.
    let q = peer.to_ascii_uppercase().replace('-', "");
    let by_prefix = |p: &&PeerInfo| q.len() >= 4 && p.id.replace('-', "").starts_with(&q);
    let who = match peers.iter().filter(live).find(|p| p.name == peer) {
        Some(p) => Some(p),
        None => {
            let mut m = peers.iter().filter(live).filter(by_prefix);
            m.next().filter(|_| m.next().is_none())
        }
    }
    .map(|p| format!("{} ({})", p.name, p.id))
    .unwrap_or_else(|| peer.to_string());
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "Remove {who} from the mesh? Every member refuses it from then on, and this cannot be undone (the device would need a new identity). [y/N] "
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
