//! `cnspr handlers`: the listing as a table, and `cnspr handlers install NAME`, which
//! copies a ready-made handler (examples/handlers, built into the binary) into the
//! handler directory the daemon uses.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::api::HandlersResult;
use crate::cli::Global;
use crate::config::Config;
use crate::output::{print_json, table};
use crate::paths::Paths;

/// One ready-made handler: its name, and its files (path in the handler directory,
/// contents).
struct Ready {
    name: &'static str,
    files: &'static [(&'static str, &'static [u8])],
    about: &'static str,
}

const READY: &[Ready] = &[
    Ready {
        name: "notify",
        files: &[(
            "notify.sh",
            include_bytes!("../../examples/handlers/notify.sh"),
        )],
        about: "desktop notification of the message (tag notify)",
    },
    Ready {
        name: "clipboard",
        files: &[
            (
                "clipboard/set.sh",
                include_bytes!("../../examples/handlers/clipboard/set.sh"),
            ),
            (
                "clipboard/get.sh",
                include_bytes!("../../examples/handlers/clipboard/get.sh"),
            ),
        ],
        about: "set and get the clipboard (tags clipboard.set, clipboard.get)",
    },
    Ready {
        name: "open-url",
        files: &[(
            "open-url.sh",
            include_bytes!("../../examples/handlers/open-url.sh"),
        )],
        about: "open a URL in the browser (tag open-url)",
    },
    Ready {
        name: "file",
        files: &[("file.sh", include_bytes!("../../examples/handlers/file.sh"))],
        about: "receive a file into Downloads with its name (tag file; send with cnspr-send-file)",
    },
    Ready {
        name: "ring",
        files: &[("ring.sh", include_bytes!("../../examples/handlers/ring.sh"))],
        about: "ring to find the device (tag ring)",
    },
    Ready {
        name: "battery",
        files: &[(
            "battery.sh",
            include_bytes!("../../examples/handlers/battery.sh"),
        )],
        about: "battery status on send --reply (tag battery)",
    },
];

/// The names, for messages.
fn names() -> String {
    READY.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

/// The handler directory: the running daemon's, else the configured one, else the
/// default.
pub fn handler_dir(paths: &Paths) -> anyhow::Result<PathBuf> {
    if let Ok(mut c) = crate::client::Client::connect(&paths.socket) {
        if let Ok(v) = c.request(&crate::api::Request::Status {}) {
            if let Some(h) = v["handlers"].as_str() {
                return Ok(PathBuf::from(h));
            }
        }
    }
    let cfg = Config::load(&paths.config, paths.config_explicit)?;
    Ok(cfg.handlers.unwrap_or_else(crate::paths::default_handlers))
}

/// The `# Needs:` lines of a script's header.
fn needs(script: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(script).ok()?;
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines().take(40) {
        let body = line.strip_prefix('#').map(str::trim_start);
        match body {
            Some(b) if b.starts_with("Needs:") => {
                inside = true;
                out.push(b.trim_start_matches("Needs:").trim().to_string());
            }
            Some(b) if inside && !b.contains(':') && !b.is_empty() => {
                out.push(b.trim().to_string())
            }
            _ => inside = false,
        }
    }
    (!out.is_empty()).then(|| out.join(" "))
}

fn write_new(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o755);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} is already there (--force replaces it)", path.display())
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn install(g: &Global, paths: &Paths, name: Option<&str>, force: bool) -> anyhow::Result<i32> {
    let Some(name) = name else {
        // No name: what can be installed.
        if g.json {
            print_json(
                &READY
                    .iter()
                    .map(|r| json!({"name": r.name, "about": r.about}))
                    .collect::<Vec<_>>(),
            )?;
        } else {
            for r in READY {
                println!("{:<10} {}", r.name, r.about);
            }
        }
        return Ok(0);
    };
    let Some(ready) = READY.iter().find(|r| r.name == name) else {
        anyhow::bail!(
            "no ready-made handler named {name:?}; there are: {}",
            names()
        );
    };
    let dir = handler_dir(paths)?;
    // All or nothing: check first that none is there (unless replacing).
    if !force {
        for (rel, _) in ready.files {
            let p = dir.join(rel);
            if p.exists() {
                anyhow::bail!("{} is already there (--force replaces it)", p.display());
            }
        }
    }
    let mut written = Vec::new();
    for (rel, bytes) in ready.files {
        let p = dir.join(rel);
        write_new(&p, bytes, force)?;
        written.push(p);
    }
    let needs = ready.files.iter().find_map(|(_, b)| needs(b));
    if g.json {
        print_json(&json!({
            "installed": ready.name,
            "files": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "needs": needs,
        }))?;
    } else {
        for p in &written {
            println!("installed {}", p.display());
        }
        if let Some(n) = needs {
            println!("needs: {n}");
        }
        println!("the daemon picks it up at the next message (docs/cookbook.md)");
    }
    Ok(0)
}

pub fn print_handlers(g: &Global, v: &Value, h: HandlersResult) -> anyhow::Result<i32> {
    if g.json {
        return print_json(v).map(|_| 0);
    }
    let rows: Vec<Vec<String>> = h
        .handlers
        .iter()
        .map(|x| vec![x.path.clone(), x.matches.clone()])
        .collect();
    print!("{}", table(&["HANDLER", "MATCHES"], &rows));
    for w in &h.warnings {
        eprintln!("warning: {w}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ready_handler_says_what_it_needs() {
        for r in READY {
            let (_, first) = r.files[0];
            assert!(first.starts_with(b"#!/bin/sh"), "{}", r.name);
            assert!(needs(first).is_some(), "{} has no Needs: line", r.name);
        }
        assert!(needs(b"#!/bin/sh\n# Needs: notify-send (Debian: libnotify-bin)\n#        and D-Bus.\n# Send: x\n")
            .is_some_and(|n| n.contains("libnotify-bin") && n.contains("D-Bus")));
    }
}
