//! Socket commands that change who is in the mesh: `trust`, `remove` and the `pair`
//! window (split from `control`, which parses and routes them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::info;
use transport::DeviceId;

use super::super::framing::{err, line_of};
use crate::api::{code, ErrorBody, Reply};
use crate::daemon::context::Daemon;

/// `pair`: opens a window, answers with the code, then with the outcome. The window
/// closes when the client goes away.
pub async fn pair_window<R>(
    d: &Arc<Daemon>,
    id: Value,
    timeout_s: Option<u64>,
    mut r: R,
    tx: mpsc::Sender<Vec<u8>>,
) where
    R: AsyncBufRead + Unpin,
{
    let lifetime = timeout_s.map_or(crate::daemon::pair::DEFAULT_WINDOW, |s| {
        Duration::from_secs(s.clamp(1, 3600))
    });
    let mut window = match crate::daemon::pair::open(d, lifetime) {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send(line_of(&Reply::err(id, e))).await;
            return;
        }
    };
    let first = serde_json::to_value(&window.info).unwrap_or(Value::Null);
    if tx
        .send(line_of(&Reply::ok(id.clone(), first)))
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 256];
    let outcome = loop {
        tokio::select! {
            u = window.next_update() => match u {
                crate::daemon::pair::Update::Attempt(a) => {
                    let line = line_of(&Reply::ok(id.clone(), serde_json::json!({"attempt": a})));
                    if tx.send(line).await.is_err() {
                        let _ = window.cancel.send(true);
                        return;
                    }
                }
                crate::daemon::pair::Update::Done(o) => break o,
            },
            n = r.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    let _ = window.cancel.send(true);
                    return;
                }
            }
        }
    };
    let reply = match outcome {
        Ok(p) => Reply::ok(id, serde_json::json!({"paired": p})),
        Err(e) => Reply::err(id, e),
    };
    let _ = tx.send(line_of(&reply)).await;
}

pub async fn trust(
    d: &Arc<Daemon>,
    id: &str,
    name: Option<String>,
    addrs: &[String],
    rename: bool,
) -> Result<Value, ErrorBody> {
    let id: DeviceId = id.parse().map_err(|e| {
        err(
            code::INVALID_ID,
            format!("{id:?} is not a device ID: {e} (see `cnspr id` on that device)"),
        )
    })?;
    if id == d.id() {
        return Err(err(code::SELF, "that is this device's own ID"));
    }
    if let Some(n) = &name {
        transport::identity::validate_name(n)
            .map_err(|e| err(code::INVALID_NAME, e.to_string()))?;
        // Names are unique in the mesh (pairing gives a suffix; here the person chose it).
        let taken = n.eq_ignore_ascii_case(&d.identity.name) || d.roster().name_taken(n, &id);
        if taken {
            return Err(err(
                code::INVALID_NAME,
                format!("{n:?} is already the name of another device of the mesh; choose another (`cnspr peers` lists the names)"),
            ));
        }
    }
    if addrs.len() > crate::daemon::peers::MAX_ADDRS {
        return Err(err(
            code::INVALID_ADDRESS,
            format!("at most {} addresses", crate::daemon::peers::MAX_ADDRS),
        ));
    }
    let mut resolved = Vec::new();
    for a in addrs {
        resolved.extend(
            crate::daemon::lookup::resolve(a)
                .await
                .map_err(|e| err(code::INVALID_ADDRESS, e.to_string()))?,
        );
    }
    if d.roster().is_removed(&id) {
        return Err(err(
            code::REMOVED,
            format!("device {id} was removed from the mesh and cannot be trusted again; that device needs a new identity (move its state directory away)"),
        ));
    }
    // A device already trusted keeps its name (its own, once it said it) unless asked.
    let known = d.peers().name_of(&id);
    let renamed_from = known
        .clone()
        .filter(|k| rename && name.as_ref().is_some_and(|n| n != k));
    let (name, placeholder) = match (name, known.clone()) {
        (Some(n), None) => (n, false),
        (Some(n), Some(_)) if renamed_from.is_some() => (n, false),
        (_, Some(k)) => (k, false),
        (None, None) => (format!("device-{}", id.short().to_lowercase()), true),
    };
    // Sign it into the mesh roster (the other members learn it by gossip): this makes it
    // a member here too, trusted by TLS and watched by the core. A placeholder never
    // outranks a name another member signed (its own is signed once it connects).
    let applied = if placeholder {
        d.members.add_placeholder(id, &name)
    } else {
        d.members.add(id, &name)
    };
    let info = {
        let mut table = d.peers();
        let Some(p) = table.peers.get_mut(&id) else {
            return Err(err(code::INTERNAL, "the roster did not take the entry"));
        };
        p.name.clone_from(&name);
        for a in resolved.into_iter().rev() {
            p.remember(a);
        }
        p.dial.reset(Instant::now());
        p.info()
    };
    d.save_peers();
    if !applied.joined.is_empty() {
        info!(peer = %name, id = %id, "peer trusted");
    }
    d.membership_changed(applied, None);
    // Dial it now, not at the next supervisor tick.
    crate::daemon::links::dial_due(d);
    let mut v = serde_json::to_value(info).unwrap_or(Value::Null);
    v["already_trusted"] = Value::Bool(known.is_some());
    if let Some(old) = renamed_from {
        info!(peer = %name, old = %old, id = %id, "peer renamed");
        v["renamed_from"] = Value::String(old);
    }
    Ok(v)
}

/// `remove`: signs a removal that every member applies (now or when it next connects).
pub fn remove(d: &Arc<Daemon>, peer: &str) -> Result<Value, ErrorBody> {
    let me = d.id();
    let own_prefix =
        peer.len() >= 4 && transport::resolve_prefix(peer, [me].iter()).is_ok_and(|id| id == me);
    if peer.eq_ignore_ascii_case(&d.identity.name) || own_prefix {
        return Err(err(
            code::SELF,
            format!(
                "{peer:?} is this device: remove it from another member (`cnspr remove {}` there)",
                d.identity.name
            ),
        ));
    }
    // A device in a conflict of removals is not in the table: found by name or ID.
    let conflicted = d.conflicts().into_iter().find(|(id, name)| {
        name == peer || (peer.len() >= 4 && transport::resolve_prefix(peer, [*id].iter()).is_ok())
    });
    let id = match d.peers().resolve(peer) {
        Ok(id) => id,
        Err(_) if conflicted.is_some() => conflicted.as_ref().map(|(id, _)| *id).unwrap_or(me),
        Err(e) => {
            // Removals keep no name: a removed device is found by its ID only.
            let removed = d.members.removed_ids();
            if let Ok(id) = transport::resolve_prefix(peer, removed.iter()) {
                return Err(err(
                    code::NOT_FOUND,
                    format!("device {id} was already removed from the mesh"),
                ));
            }
            return Err(e);
        }
    };
    if d.roster().is_removed(&id) {
        return Err(err(
            code::NOT_FOUND,
            format!("{peer} ({id}) was already removed from the mesh"),
        ));
    }
    let name = d
        .peers()
        .name_of(&id)
        .or_else(|| d.roster().name_of(&id))
        .unwrap_or_default();
    // `kept`: members only the removed device had signed for; this device signs for them
    // now, so they stay (a removal does not cascade). If it was stolen, the person should
    // know which devices it may have added.
    let (applied, kept) = d.members.remove(id, &name);
    // Devices this removal trusts again: its removals of them are void now.
    let restored: Vec<&str> = applied.joined.iter().map(|(_, n)| n.as_str()).collect();
    let reply = serde_json::json!({
        "removed": {"id": id.to_string(), "name": name},
        "restored": restored,
        "kept": kept,
    });
    d.membership_changed(applied, None);
    d.gossip_roster(None);
    Ok(reply)
}

/// `pair.join`: joins the mesh of a device whose pairing window shows `code`.
pub async fn pair_join(
    d: &Arc<Daemon>,
    code: &str,
    addrs: &[String],
    timeout_s: Option<u64>,
) -> Result<Value, ErrorBody> {
    let resolved = crate::daemon::pair::resolve_addrs(addrs).await?;
    let timeout = Duration::from_secs(timeout_s.unwrap_or(30).clamp(1, 3600));
    let paired = crate::daemon::pair::join(d, code, resolved, timeout).await?;
    Ok(serde_json::json!({"paired": paired}))
}
