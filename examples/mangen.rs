//! Writes the manual pages of `cnspr` (section 1) from the same clap definitions the
//! binary parses (`cnspr::cli::Cli`): `cnspr.1`, one page per subcommand (`cnspr-send.1`)
//! and one per nested subcommand (`cnspr-kv-put.1`), each with a SEE ALSO section.
//!
//! ```text
//! cargo run --example mangen -- OUTDIR
//! ```
//!
//! The pages are written uncompressed; the Debian package compresses them
//! (see docs/packaging.md). Their date is the day of `SOURCE_DATE_EPOCH` when it is set
//! (scripts/package-deb sets it to the last commit's time, so that the same sources give
//! the same pages), else today.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Inline, Roff};
use clap_mangen::Man;

/// Pages that a page's SEE ALSO names besides its parents, children and (below the top
/// level) siblings, which it names anyway. Keyed by page name; `cnspr-*` entries must be
/// pages this generator writes (checked when generating).
const RELATED: &[(&str, &[&str])] = &[
    (
        "cnspr-serve",
        &[
            "cnspr-init(1)",
            "cnspr-status(1)",
            "cnspr-stop(1)",
            "cnspr-handlers(1)",
            "systemctl(1)",
            "journalctl(1)",
        ],
    ),
    (
        "cnspr-init",
        &["cnspr-id(1)", "cnspr-serve(1)", "cnspr-pair(1)"],
    ),
    (
        "cnspr-id",
        &["cnspr-init(1)", "cnspr-trust(1)", "cnspr-pair(1)"],
    ),
    ("cnspr-status", &["cnspr-serve(1)", "cnspr-peers(1)"]),
    (
        "cnspr-peers",
        &[
            "cnspr-status(1)",
            "cnspr-ping(1)",
            "cnspr-trust(1)",
            "cnspr-remove(1)",
        ],
    ),
    ("cnspr-ping", &["cnspr-peers(1)"]),
    ("cnspr-send", &["cnspr-handlers(1)", "cnspr-monitor(1)"]),
    ("cnspr-monitor", &["cnspr-send(1)", "cnspr-peers(1)"]),
    ("cnspr-handlers", &["cnspr-send(1)", "cnspr-serve(1)"]),
    (
        "cnspr-trust",
        &[
            "cnspr-pair(1)",
            "cnspr-id(1)",
            "cnspr-remove(1)",
            "cnspr-peers(1)",
        ],
    ),
    (
        "cnspr-pair",
        &["cnspr-trust(1)", "cnspr-id(1)", "cnspr-remove(1)"],
    ),
    (
        "cnspr-remove",
        &["cnspr-trust(1)", "cnspr-pair(1)", "cnspr-peers(1)"],
    ),
    ("cnspr-stop", &["cnspr-serve(1)", "systemctl(1)"]),
    (
        "cnspr-connect",
        &["cnspr-listen(1)", "cnspr-expose(1)", "ssh_config(5)"],
    ),
    ("cnspr-listen", &["cnspr-connect(1)", "cnspr-expose(1)"]),
    ("cnspr-expose", &["cnspr-connect(1)", "cnspr-listen(1)"]),
];

/// One rendered manual page.
#[derive(Debug)]
pub struct Page {
    /// Page name, e.g. `cnspr-kv-put`.
    pub name: String,
    /// File name, e.g. `cnspr-kv-put.1`.
    pub file_name: String,
    /// The page in roff.
    pub roff: Vec<u8>,
}

/// The whole command tree as the binary sees it, minus clap's `help` subcommand (which
/// has no page of its own).
pub fn command() -> clap::Command {
    let mut cmd = cnspr::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Renders every page: the top-level command first, then each subcommand depth-first.
pub fn pages() -> io::Result<Vec<Page>> {
    let root = command();
    let date = page_date();
    let version = root.get_version().unwrap_or_default().to_owned();
    let mut all = Vec::new();
    collect(&root, &mut Vec::new(), &mut all);

    let names: Vec<String> = all.iter().map(|(cmd, _)| page_name(cmd)).collect();
    for (page, _) in RELATED {
        if !names.iter().any(|n| n == page) {
            return Err(invalid(format!("SEE ALSO table names unknown page {page}")));
        }
    }

    let mut out = Vec::new();
    for (cmd, parents) in &all {
        let name = page_name(cmd);
        let see_also = see_also(cmd, parents, &names)?;
        let man = Man::new(cmd.clone())
            .title(name.to_uppercase())
            .section("1")
            .date(date.clone())
            .source(format!("cnspr {version}"))
            .manual("User Commands");
        let mut roff = Vec::new();
        render(&man, cmd, parents.is_empty(), &see_also, &mut roff)?;
        out.push(Page {
            file_name: format!("{name}.1"),
            name,
            roff,
        });
    }
    Ok(out)
}

/// Writes every page into `dir` (created if missing); returns the files written.
pub fn write_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for page in pages()? {
        let path = dir.join(&page.file_name);
        std::fs::write(&path, &page.roff)?;
        written.push(path);
    }
    Ok(written)
}

/// Every visible command with the chain of its parents, parents before children.
fn collect(
    cmd: &clap::Command,
    parents: &mut Vec<clap::Command>,
    out: &mut Vec<(clap::Command, Vec<clap::Command>)>,
) {
    out.push((cmd.clone(), parents.clone()));
    parents.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, parents, out);
    }
    parents.pop();
}

/// `cnspr`, `cnspr-send`, `cnspr-kv-put`: clap's display name once the tree is built.
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The SEE ALSO entries of one page, as `(name, section)`, without duplicates.
fn see_also(
    cmd: &clap::Command,
    parents: &[clap::Command],
    names: &[String],
) -> io::Result<Vec<(String, String)>> {
    let me = page_name(cmd);
    let mut refs: Vec<String> = Vec::new();
    refs.extend(parents.iter().map(|p| format!("{}(1)", page_name(p))));
    let visible = |c: &clap::Command| !c.is_hide_set();
    refs.extend(
        cmd.get_subcommands()
            .filter(|c| visible(c))
            .map(|c| format!("{}(1)", page_name(c))),
    );
    // Siblings below the top level (the pages of `cnspr kv put` name those of get, del, ...);
    // at the top level the table says which siblings are related.
    if parents.len() >= 2 {
        if let Some(parent) = parents.last() {
            refs.extend(
                parent
                    .get_subcommands()
                    .filter(|c| visible(c))
                    .map(|c| format!("{}(1)", page_name(c))),
            );
        }
    }
    if let Some((_, extra)) = RELATED.iter().find(|(page, _)| *page == me) {
        refs.extend(extra.iter().map(|s| (*s).to_owned()));
    }

    let mut out: Vec<(String, String)> = Vec::new();
    for r in refs {
        let (name, section) = r
            .strip_suffix(')')
            .and_then(|r| r.split_once('('))
            .ok_or_else(|| invalid(format!("SEE ALSO entry {r} is not NAME(SECTION)")))?;
        if name == me || out.iter().any(|(n, _)| n == name) {
            continue;
        }
        if name.starts_with("cnspr") && !names.iter().any(|n| n == name) {
            return Err(invalid(format!(
                "SEE ALSO of {me} names unknown page {name}"
            )));
        }
        out.push((name.to_owned(), section.to_owned()));
    }
    Ok(out)
}

/// clap_mangen's sections in its order, then ENVIRONMENT and FILES (top-level page only),
/// SEE ALSO and VERSION.
fn render(
    man: &Man,
    cmd: &clap::Command,
    top: bool,
    see_also: &[(String, String)],
    w: &mut Vec<u8>,
) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        man.render_extra_section(w)?;
    }

    let mut roff = Roff::default();
    // No hyphenation nor justification in the sections written here: page names and
    // paths stay whole and evenly spaced.
    roff.control("nh", []);
    roff.control("ad", ["l"]);
    if top {
        environment(&mut roff);
        files(&mut roff);
    }
    if !see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"]);
        let mut line: Vec<Inline> = Vec::new();
        for (i, (name, section)) in see_also.iter().enumerate() {
            let sep = if i + 1 == see_also.len() { "" } else { ", " };
            line.push(bold(name.as_str()));
            line.push(roman(format!("({section}){sep}")));
        }
        roff.text(line);
    }
    roff.control("ad", ["b"]);
    roff.control("hy", []);
    roff.to_writer(w)?;

    if cmd.get_version().is_some() || cmd.get_long_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// Environment variables beyond those the options name (paths.rs, main.rs).
fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    let vars: &[(&str, &str)] = &[
        (
            "XDG_DATA_HOME",
            "Parent of the default state directory (default ~/.local/share).",
        ),
        (
            "XDG_CONFIG_HOME",
            "Parent of the default configuration and handler directory (default ~/.config).",
        ),
        (
            "XDG_RUNTIME_DIR",
            "Parent of the default control socket; without it the socket is in the state directory.",
        ),
        (
            "RUST_LOG",
            "Log filter (e.g. debug, or cnspr=trace); overrides -v.",
        ),
    ];
    for (var, text) in vars {
        roff.control("TP", []);
        roff.text([bold(*var)]);
        roff.text([roman(*text)]);
    }
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    let files: &[(&str, &str)] = &[
        (
            "$XDG_CONFIG_HOME/cnspr/config.toml",
            "Configuration (see --config).",
        ),
        (
            "$XDG_CONFIG_HOME/cnspr/handlers/",
            "Handlers run for received messages (see cnspr-handlers(1)).",
        ),
        (
            "$XDG_DATA_HOME/cnspr/",
            "State directory: this device's identity, the trusted peers, the key-value store (see --state-dir).",
        ),
        (
            "$XDG_RUNTIME_DIR/cnspr/cnspr.sock",
            "Control socket of the daemon (see --socket).",
        ),
        (
            "/usr/lib/systemd/user/cnspr.service",
            "systemd user unit running cnspr serve (systemctl --user enable --now cnspr).",
        ),
    ];
    for (path, text) in files {
        roff.control("TP", []);
        roff.text([bold(*path)]);
        roff.text([roman(*text)]);
    }
}

/// The day of `SOURCE_DATE_EPOCH`, else today, as YYYY-MM-DD.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example mangen -- OUTDIR");
        return ExitCode::from(2);
    };
    match write_pages(Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mangen: {e}");
            ExitCode::FAILURE
        }
    }
}
