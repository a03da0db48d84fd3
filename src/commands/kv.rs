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
                    print_json(&a.0)?;
                } else {
                    eprintln!("cnspr: conflict: {}", a.0.message);
                }
                Ok(None)
            }
            _ => Err(e),
        },
        Ok(v) => Ok(Some(v)),
    }
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
                    if !g.json {
                        eprintln!("cnspr: no key {key:?}");
                    }
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
                    for s in v["siblings"].as_array().into_iter().flatten() {
                        eprintln!(
                            "superseded concurrent version: {} from {} at {}",
                            if s["deleted"] == true {
                                "delete".to_string()
                            } else {
                                format!(
                                    "{} bytes",
                                    s["value_b64"]
                                        .as_str()
                                        .map(|b| b.len() * 3 / 4)
                                        .unwrap_or(0)
                                )
                            },
                            s["origin"].as_str().unwrap_or(""),
                            s["hlc"].as_str().unwrap_or("")
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
            c.request(&Request::KvWatch {
                prefix,
                from_seq: from,
            })?;
            follow(&mut c, g, |v| {
                let what = if v["deleted"] == true { "del" } else { "put" };
                format!(
                    "{} {what} {}",
                    v["feed_seq"],
                    v["key"].as_str().unwrap_or("")
                )
            })?;
        }
    }
    Ok(0)
}
