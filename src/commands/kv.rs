//! `cnspr kv ...`: the store from the command line.

use std::io::{Read, Write};

use anyhow::Context;
use serde_json::Value;

use super::follow::follow;
use crate::api::Request;
use crate::cli::Global;
use crate::client::Client;
use crate::output::print_json;

/// A conditional write's reply: `None` after saying why when it was a `conflict` (the
/// caller exits 3), the result otherwise.
fn conflict_exit(res: anyhow::Result<Value>, g: &Global) -> anyhow::Result<Option<Value>> {
    match res {
        Err(e) => match e.downcast_ref::<crate::client::ApiError>() {
            Some(a) if a.0.code == crate::api::Code::Conflict => {
                if g.json {
                    crate::output::print_error_json(&a.0)?;
                }
                eprintln!("cnspr: conflict: {}", a.0.message);
                Ok(None)
            }
            _ => Err(e),
        },
        Ok(v) => Ok(Some(v)),
    }
}

/// Device names by ID (this device and its peers), to name a version's origin.
fn device_names(c: &mut Client) -> std::collections::HashMap<String, String> {
    let mut names = std::collections::HashMap::new();
    if let Ok(s) = c.request(&Request::Status {}) {
        if let (Some(id), Some(name)) = (s["id"].as_str(), s["name"].as_str()) {
            names.insert(id.to_string(), format!("{name} (this device)"));
        }
    }
    if let Ok(peers) = c.request(&Request::Peers {}) {
        for p in peers.as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) {
                names.insert(id.to_string(), name.to_string());
            }
        }
    }
    names
}

/// A version's value for a person (`None` for a delete).
fn value_text(v: &Value) -> Option<String> {
    (v["deleted"] != true).then(|| {
        let bytes = data_encoding::BASE64
            .decode(v["value_b64"].as_str().unwrap_or("").as_bytes())
            .unwrap_or_default();
        crate::output::value_preview(&bytes)
    })
}

/// The name of the device that wrote a version (its short ID when unknown).
fn writer_name(v: &Value, names: &std::collections::HashMap<String, String>) -> String {
    let origin = v["origin"].as_str().unwrap_or("");
    names
        .get(origin)
        .cloned()
        .unwrap_or_else(|| crate::output::short_id(origin))
}

/// One version of a key for a person: its value (or that it is a delete), who wrote it
/// and when, and the version string for `--if-version`.
fn version_line(v: &Value, names: &std::collections::HashMap<String, String>) -> String {
    let what = value_text(v).unwrap_or_else(|| "deleted".into());
    let who = writer_name(v, names);
    let when = v["hlc"]
        .as_str()
        .and_then(|h| h.split('.').next()?.parse::<u64>().ok())
        .map(|ms| crate::output::ago(Some(ms / 1000)))
        .unwrap_or_default();
    format!(
        "{what} from {who}, {when} (version {})",
        v["version"].as_str().unwrap_or("")
    )
}

/// A watch event for a person: feed seq, what happened, whether it won, who wrote it,
/// and the batch it belongs to.
fn watch_line(v: &Value, names: &std::collections::HashMap<String, String>) -> String {
    let what = value_text(v).map_or_else(|| "del".into(), |t| format!("put {t}"));
    let who = writer_name(v, names);
    let lost = if v["wins"] == false {
        " (concurrent, lost: kept as a sibling)"
    } else {
        ""
    };
    let batch = match (v["batch"].as_str(), v["batch_end"] == true) {
        (Some(_), true) => " [batch, end]",
        (Some(_), false) => " [batch]",
        _ => "",
    };
    format!(
        "{} {} {what} by {who}{lost}{batch}",
        v["feed_seq"],
        v["key"].as_str().unwrap_or("")
    )
}

pub fn kv(mut c: Client, g: &Global, k: crate::cli::KvCommand) -> anyhow::Result<i32> {
    use crate::cli::KvCommand as K;
    match k {
        K::Put {
            key,
            value,
            if_version,
            if_absent,
        } => {
            let bytes: Vec<u8> = match value.as_deref() {
                Some("-") | None => {
                    let max = crate::store::MAX_VALUE_BYTES;
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("reading the value from standard input (Ctrl-D to end)");
                    }
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .lock()
                        .take(max as u64 + 1)
                        .read_to_end(&mut buf)
                        .context("reading the value from standard input")?;
                    if buf.len() > max {
                        anyhow::bail!("the value is larger than the limit of 8 MiB ({max} bytes)");
                    }
                    buf
                }
                Some(v) => v.as_bytes().to_vec(),
            };
            let v = c.request_with_body(
                &Request::KvPut {
                    key,
                    value: None,
                    value_b64: None,
                    value_len: Some(bytes.len() as u64),
                    if_version,
                    if_absent,
                },
                &bytes,
            );
            let Some(v) = conflict_exit(v, g)? else {
                return Ok(3);
            };
            if g.json {
                print_json(&v)?;
            }
        }
        K::Get { key, all_versions } => {
            let v = match c.request(&Request::KvGet {
                key: key.clone(),
                all_versions,
            }) {
                Ok(v) => v,
                Err(e)
                    if e.downcast_ref::<crate::client::ApiError>()
                        .is_some_and(|a| a.0.code == crate::api::Code::NotFound) =>
                {
                    if g.json {
                        let e = e.downcast_ref::<crate::client::ApiError>().map(|a| &a.0);
                        crate::output::print_error_json(&e)?;
                    }
                    eprintln!("cnspr: no key {key:?}");
                    return Ok(1);
                }
                Err(e) => return Err(e),
            };
            if g.json {
                print_json(&v)?;
            } else {
                let value = data_encoding::BASE64
                    .decode(v["value_b64"].as_str().unwrap_or("").as_bytes())?;
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                out.flush()?;
                if all_versions {
                    // The winner's bytes went to standard output, unchanged; every
                    // version, readable, goes to standard error.
                    let names = device_names(&mut c);
                    let siblings = v["siblings"].as_array().cloned().unwrap_or_default();
                    eprintln!("{} version(s):", 1 + siblings.len());
                    eprintln!("  wins: {}", version_line(&v, &names));
                    for s in &siblings {
                        eprintln!("  lost: {}", version_line(s, &names));
                    }
                    if !siblings.is_empty() {
                        eprintln!(
                            "  (write the key again, or with --if-version of the winner, to keep one)"
                        );
                    }
                }
            }
        }
        K::Del { key, if_version } => {
            let v = c.request(&Request::KvDel {
                key,
                if_version,
                if_absent: false,
            });
            let Some(v) = conflict_exit(v, g)? else {
                return Ok(3);
            };
            if g.json {
                print_json(&v)?;
            }
        }
        K::Batch { file } => {
            let text = super::batch::read_input(file.as_deref())?;
            let (req, body) = super::batch::request(super::batch::parse(&text)?);
            let v = c.request_with_body(&req, &body);
            let Some(v) = conflict_exit(v, g)? else {
                return Ok(3);
            };
            if g.json {
                print_json(&v)?;
            } else {
                let ops = v["ops"].as_array().map(Vec::as_slice).unwrap_or_default();
                let unchanged = ops.iter().filter(|o| o["unchanged"] == true).count();
                let written = ops.len() - unchanged;
                match v["batch"].as_str() {
                    Some(id) => {
                        eprintln!("{written} written in one batch ({id}), {unchanged} unchanged")
                    }
                    None => eprintln!("nothing written: the {unchanged} deleted keys had no value"),
                }
            }
        }
        K::Incr { key, n } => {
            let v = c.request(&Request::KvIncr { key, by: n })?;
            if g.json {
                print_json(&v)?;
            } else {
                println!("{}", v["value"].as_str().unwrap_or_default());
            }
        }
        K::List { prefix } => {
            let mut after: Option<String> = None;
            let mut all = Vec::new();
            loop {
                let v = c.request(&Request::KvList {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: Some(1000),
                })?;
                let entries = v["entries"].as_array().cloned().unwrap_or_default();
                after = entries
                    .last()
                    .and_then(|e| e["key"].as_str().map(String::from));
                all.extend(entries);
                if v["more"] != true || after.is_none() {
                    break;
                }
            }
            if g.json {
                print_json(&all)?;
            } else {
                for e in &all {
                    println!("{}", e["key"].as_str().unwrap_or(""));
                }
            }
        }
        K::Watch { prefix, from } => {
            let names = if g.json {
                Default::default()
            } else {
                device_names(&mut c)
            };
            c.request(&Request::KvWatch {
                prefix: prefix.clone(),
                from_seq: from,
            })?;
            if !g.json {
                let under = prefix.map(|p| format!(" under {p:?}")).unwrap_or_default();
                match from {
                    None => eprintln!(
                        "changes{under}: every change kept in the feed first, then live ones                          (--from SEQ resumes after SEQ)"
                    ),
                    Some(s) => eprintln!("changes{under} after {s}, then live ones"),
                }
            }
            follow(&mut c, g, |v| watch_line(v, &names))?;
        }
    }
    Ok(0)
}
