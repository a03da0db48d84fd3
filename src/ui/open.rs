//! `cnspr ui`: prints the dashboard's URL and opens it in the user's browser, but only
//! when standard output is a terminal, a graphical session is there and `--no-open` was
//! not given (never in scripts or tests).
//!
//! The browser is not given the URL itself, which would show the token to every local
//! user in the process list (`/proc/PID/cmdline`), but a small page that only the user
//! can read (mode 0600, in the control socket's directory) and that redirects to it.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::api::Request;
use crate::client::Client;
use crate::paths::Paths;

/// Asks the daemon for the dashboard (starting it if needed), prints its URL (`--json`:
/// the reply as is) and opens it when it should.
pub fn run(c: &mut Client, paths: &Paths, json: bool, no_open: bool) -> anyhow::Result<()> {
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
    if no_open || !display || !std::io::stdout().is_terminal() {
        return Ok(());
    }
    let dir = paths
        .socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(&paths.state_dir);
    let opened = launcher(dir, url).and_then(|page| {
        // The browser may keep running: not waited for, its output not shown.
        std::process::Command::new("xdg-open")
            .arg(&page)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(drop)
    });
    if let Err(e) = opened {
        eprintln!("cnspr: could not open a browser ({e}); open the URL above");
    }
    Ok(())
}

/// Writes `DIR/ui.html` (mode 0600, replaced each time): a page that sends the browser
/// to `url`.
pub fn launcher(dir: &Path, url: &str) -> std::io::Result<PathBuf> {
    let path = dir.join("ui.html");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let url = html_escape(url);
    write!(
        f,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0; url={url}\"><title>cnspr</title></head>\
         <body><p><a href=\"{url}\">Open the cnspr dashboard</a></p></body></html>\n"
    )?;
    Ok(path)
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_launcher_page_is_private_and_redirects() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:8123/?token=ab\"<x>&y";
        let p = super::launcher(dir.path(), url).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("url=http://127.0.0.1:8123/?token=ab&quot;&lt;x&gt;&amp;y\""),
            "{text}"
        );
        // Written again: replaced, not appended to.
        super::launcher(dir.path(), "http://127.0.0.1:1/?token=00").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("token=00") && !text.contains("8123"),
            "{text}"
        );
    }
}
