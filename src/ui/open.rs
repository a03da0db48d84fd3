//! `cnspr ui`: prints the dashboard's URL and opens it in the user's browser, but only
//! when standard output is a terminal, a graphical session is there and `--no-open` was
//! not given (never in scripts or tests).

use std::io::IsTerminal;

use crate::api::Request;
use crate::client::Client;

/// Asks the daemon for the dashboard (starting it if needed), prints its URL (`--json`:
/// the reply as is) and opens it when it should.
pub fn run(c: &mut Client, json: bool, no_open: bool) -> anyhow::Result<()> {
    let v = &c.request(&Request::Ui {})?;
    if json {
        return crate::output::print_json(v);
    }
    let url = v["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the daemon's `ui` reply has no url"))?;
    println!("{url}");
    let display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if !no_open && display && std::io::stdout().is_terminal() {
        // The browser may keep running: not waited for, its output not shown.
        let spawned = std::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("cnspr: could not open a browser (xdg-open: {e}); open the URL above");
        }
    }
    Ok(())
}
