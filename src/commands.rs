//! Client commands: each sends one request to the daemon and prints the answer.

use std::io::Write;

mod batch;
pub mod complete;
mod follow;
mod install;
mod kv;
mod late;
mod members;
mod send;
mod wake;

use follow::{describe_event, follow};

use serde_json::{json, Value};

use crate::api::{HandlersResult, PeerInfo, PingResult, Request, Status};
use crate::cli::{secs_to_ms, Command, Global};
use crate::client::Client;
use crate::output::{ago, print_json, short_id, table};
use crate::paths::Paths;

/// Runs a client command; returns the process exit code.
pub fn run(cmd: Command, g: &Global, paths: &Paths) -> anyhow::Result<i32> {
    // Works with no daemon running.
    if let Command::Handlers {
        action: Some(crate::cli::HandlersAction::Install { name, force }),
    } = &cmd
    {
        return install::install(g, paths, name.as_deref(), *force);
    }
    let mut c = match (Client::connect(&paths.socket), &cmd) {
        (Ok(c), _) => c,
        // `handlers` reads the directory itself when no daemon runs.
        (Err(_), Command::Handlers { action: None }) => {
            let dir = install::handler_dir(paths)?;
            let h = crate::handlers::listing::listing(&dir);
            return install::print_handlers(g, &serde_json::to_value(&h)?, h);
        }
        (Err(e), _) => return Err(e),
    };
    match cmd {
        Command::Status => {
            let v = c.request(&Request::Status {})?;
            if g.json {
                return print_json(&v).map(|_| 0);
            }
            let s: Status = serde_json::from_value(v)?;
            println!("Device ID: {}", s.id);
            println!("Name:      {}", s.name);
            println!("Listening: {}", s.listen.join(", "));
            println!("Peers:     {} ({} active)", s.peers, s.active);
            println!("Uptime:    {}s", s.uptime_s);
            if let Some(p) = &s.profile {
                println!("Profile:   {} ({})", p.current, p.source);
            }
            println!("Handlers:  {}", s.handlers);
            println!("Socket:    {}", s.socket);
            if let Some(r) = &s.removed {
                println!(
                    "Removed:   this device was removed from the mesh by {} ({})",
                    r.by,
                    ago(Some(r.at))
                );
            }
            for c in &s.conflicts {
                println!("Conflict:  {c}");
            }
        }
        Command::Peers => {
            let v = c.request(&Request::Peers {})?;
            if g.json {
                return print_json(&v).map(|_| 0);
            }
            let peers: Vec<PeerInfo> = serde_json::from_value(v)?;
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| {
                    vec![
                        crate::output::name_or_dash(&p.name),
                        short_id(&p.id),
                        p.state.clone(),
                        p.addresses.first().cloned().unwrap_or_else(|| "-".into()),
                        p.rtt_ms
                            .map(|r| format!("{r:.2} ms"))
                            .unwrap_or_else(|| "-".into()),
                        ago(p.last_seen),
                        p.path
                            .as_ref()
                            .map(crate::output::path_text)
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NAME", "ID", "STATE", "ADDRESS", "RTT", "LAST SEEN", "VIA"],
                    &rows
                )
            );
            // This device itself may be out of the mesh: say so under the table.
            if let Ok(s) = c.request(&Request::Status {}) {
                if let Some(by) = s["removed"]["by"].as_str() {
                    eprintln!("cnspr: this device was removed from the mesh by {by}");
                }
                for c in s["conflicts"].as_array().into_iter().flatten() {
                    eprintln!("cnspr: {}", c.as_str().unwrap_or_default());
                }
            }
        }
        Command::Ping { peer, timeout } => {
            let v = c.request(&Request::Ping {
                peer,
                timeout_ms: Some(secs_to_ms(timeout)?),
            })?;
            if g.json {
                return print_json(&v).map(|_| 0);
            }
            let p: PingResult = serde_json::from_value(v)?;
            let path = if p.via.is_empty() {
                "direct".to_string()
            } else {
                format!("relay via {}", p.via.join(" -> "))
            };
            let at = if p.address.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.address)
            };
            println!("reply from {}{at}: time={:.3} ms, {path}", p.peer, p.rtt_ms);
        }
        Command::Send(args) => return send::send(&mut c, g, args),
        Command::Monitor { events } => {
            c.request(&Request::Subscribe { events })?;
            follow(&mut c, g, describe_event)?;
        }
        Command::Handlers { action: Some(_) } => unreachable!("dispatched before connecting"),
        Command::Handlers { action: None } => {
            let v = c.request(&Request::Handlers {})?;
            let h: HandlersResult = serde_json::from_value(v.clone())?;
            return install::print_handlers(g, &v, h);
        }
        Command::Trust {
            id,
            name,
            addrs,
            rename,
        } => return members::trust(&mut c, g, id, name, addrs, rename),
        Command::Pair {
            code,
            addrs,
            timeout,
        } => return pair(&mut c, g, code, addrs, timeout),
        Command::Remove { peer, yes } => return members::remove(&mut c, g, peer, yes),
        Command::Relay(args) => {
            let req = match args.action {
                Some(crate::cli::RelayAction::Add { addr, secret }) => {
                    Request::RelayAdd { addr, secret }
                }
                Some(crate::cli::RelayAction::Remove { addr }) => Request::RelayRemove { addr },
                Some(crate::cli::RelayAction::List) | None => Request::RelayList {},
            };
            let v = c.request(&req)?;
            if g.json {
                return print_json(&v).map(|_| 0);
            }
            let relays: Vec<crate::api::RelayInfo> = serde_json::from_value(v)?;
            let rows: Vec<Vec<String>> = relays
                .iter()
                .map(|r| {
                    let dash = || "-".to_string();
                    vec![
                        r.addr.clone(),
                        r.state.clone(),
                        r.transport.clone().unwrap_or_else(dash),
                        r.observed
                            .clone()
                            .or_else(|| r.problem.clone())
                            .unwrap_or_else(dash),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no relay (add one with: cnspr relay add HOST:PORT SECRET)");
            } else {
                print!(
                    "{}",
                    table(&["RELAY", "STATE", "OVER", "SEEN AS / PROBLEM"], &rows)
                );
            }
        }
        Command::Ui { no_open } => crate::ui::open::run(&mut c, paths, g.json, no_open)?,
        Command::Stop => {
            let v = c.request(&Request::Stop {})?;
            // Returns once the daemon has exited (its port and socket are free, so
            // `cnspr stop && cnspr serve` works).
            let exited = match v["pid"].as_u64() {
                Some(pid) => wait_exit(pid, std::time::Duration::from_secs(15)),
                None => true, // an older daemon: it does not say.
            };
            if g.json {
                print_json(&serde_json::json!({"stopped": exited, "pid": v["pid"]}))?;
            } else if exited {
                println!("daemon stopped");
            }
            if !exited {
                eprintln!(
                    "cnspr: the daemon (pid {}) is still running 15 s after it was asked to stop",
                    v["pid"]
                );
                return Ok(1);
            }
        }
        Command::Connect {
            peer,
            service,
            progress,
            timeout,
        } => {
            let timeout_ms = Some(secs_to_ms(timeout)?);
            return crate::pipe::connect(c, paths, progress, |fds| Request::Connect {
                peer,
                service,
                timeout_ms,
                fds,
            });
        }
        Command::Listen {
            service,
            exec,
            keep,
            once,
        } => return crate::pipe::listen(c, paths, &service, exec, keep, once),
        Command::Expose {
            service,
            target,
            remove,
        } => return crate::pipe::expose(c, g, service, target, remove),
        Command::Kv(k) => return kv::kv(c, g, k),
        Command::Wake { peer, force } => return wake::wake(&mut c, g, peer, force),
        Command::Serve(_) | Command::Init { .. } | Command::Id | Command::Completions { .. } => {
            anyhow::bail!("not a client command")
        }
    }
    Ok(0)
}

/// Waits until process `pid` has exited (no `/proc` entry, or every thread of it a
/// zombie: the main thread can be one while others still run), at most `within`; false
/// if it is still running.
fn wait_exit(pid: u64, within: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let tasks = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    // "PID (COMM) STATE ...": the state follows the last ')'.
    let live = |stat: std::path::PathBuf| {
        std::fs::read_to_string(stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X')
        })
    };
    loop {
        let running = std::fs::read_dir(&tasks)
            .is_ok_and(|dir| dir.flatten().any(|t| live(t.path().join("stat"))));
        if !running {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Prints each line the daemon streams (events after `subscribe`, changes after
/// `kv.watch`) as it arrives: raw with `--json`, else through `human`.
fn pair(
    c: &mut Client,
    g: &Global,
    code: Option<String>,
    addrs: Vec<String>,
    timeout: Option<f64>,
) -> anyhow::Result<i32> {
    let timeout_s = match timeout {
        Some(t) if !(t.is_finite() && (1.0..=3600.0).contains(&t)) => {
            anyhow::bail!("--timeout must be between 1 and 3600 seconds")
        }
        Some(t) => Some(t.ceil() as u64),
        None => None,
    };
    let stdout = std::io::stdout();
    if let Some(code) = code {
        let v = c.request(&Request::PairJoin {
            code,
            addrs,
            timeout_s,
        })?;
        if g.json {
            return print_json(
                &json!({"paired": {"id": v["paired"]["id"], "name": v["paired"]["name"]}}),
            )
            .map(|_| 0);
        }
        let p = &v["paired"];
        println!(
            "paired with {} ({})",
            p["name"].as_str().unwrap_or(""),
            p["id"].as_str().unwrap_or("")
        );
        if let Some(n) = p["self_name"].as_str() {
            println!("this device is called {n} in the mesh");
        }
        return Ok(0);
    }
    if !addrs.is_empty() {
        anyhow::bail!("--addr needs a CODE (it says where to find the other device's window)");
    }
    let first = c.request(&Request::Pair { timeout_s })?;
    {
        let mut out = stdout.lock();
        if g.json {
            writeln!(out, "{}", serde_json::to_string(&first)?)?;
        } else {
            let code = first["code"].as_str().unwrap_or("");
            writeln!(
                out,
                "Pairing code: {code}   (valid {} s)",
                first["expires_in_s"]
            )?;
            writeln!(out, "On the other device run:  cnspr pair {code}")?;
            if let Some(a) = first["addresses"].as_array().filter(|a| !a.is_empty()) {
                let a: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                writeln!(
                    out,
                    "Without multicast add:    --addr {}",
                    a.join(" --addr ")
                )?;
            }
            if let Some(n) = first["nearby"].as_array().filter(|n| !n.is_empty()) {
                writeln!(out, "Nearby devices not in the mesh:")?;
                let rows: Vec<Vec<String>> = n
                    .iter()
                    .map(|d| {
                        vec![
                            d["name"].as_str().unwrap_or("").to_string(),
                            d["id"].as_str().unwrap_or("").to_string(),
                            if d["pairing"].as_bool() == Some(true) {
                                "pairing window open".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                write!(out, "{}", table(&["NAME", "ID", ""], &rows))?;
            }
            writeln!(out, "Waiting for the other device...")?;
        }
        out.flush()?;
    }
    // Failed attempts as they happen, then the outcome.
    let done = loop {
        let v = c.next_reply()?;
        let Some(a) = v.get("attempt") else { break v };
        if g.json {
            print_json(&v)?;
        } else {
            println!("{}", attempt_line(a));
        }
    };
    let p = &done["paired"];
    if g.json {
        print_json(&json!({"paired": {"id": p["id"], "name": p["name"]}}))?;
    } else {
        println!(
            "paired with {} ({})",
            p["name"].as_str().unwrap_or(""),
            p["id"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

/// A failed attempt on this device's pairing window, for people.
fn attempt_line(a: &Value) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
    let who = format!("{} ({}) at {}", s("name"), s("id"), s("address"));
    match (s("result").as_str(), a["left"].as_u64().unwrap_or(0)) {
        ("wrong_code", 0) => format!("wrong code from {who}: the window is closed"),
        ("wrong_code", 1) => format!("wrong code from {who}: 1 attempt left"),
        ("wrong_code", n) => format!("wrong code from {who}: {n} attempts left"),
        _ => format!("refused {who}: {}", s("reason")),
    }
}
