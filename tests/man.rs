//! The manual pages (examples/mangen.rs): one per command of the clap tree, each with a
//! SEE ALSO naming only pages that exist, and each rendering with `man` to a page that
//! shows every option of its command.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

/// The example `mangen` as cargo built it for this test run (`cargo test` builds the
/// examples): `target/PROFILE/examples/mangen`.
fn mangen_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap();
    let bin = profile.join("examples").join("mangen");
    assert!(
        bin.exists(),
        "no {} (`cargo test` builds it; alone: `cargo build --example mangen`)",
        bin.display()
    );
    bin
}

/// The command tree as the generator sees it (clap's `help` subcommand has no page).
fn command_tree() -> clap::Command {
    let mut cmd = cnspr::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Page file names expected from walking the command tree independently of the
/// generator: `cnspr.1`, `cnspr-send.1`, `cnspr-kv-put.1`, ...
fn expected_pages() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        out.insert(format!("{prefix}.1"));
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&cnspr::cli::Cli::command(), "cnspr", &mut out);
    out
}

fn generate() -> (tempfile::TempDir, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(mangen_bin()).arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "mangen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect::<BTreeSet<_>>();
    let on_disk = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>();
    assert_eq!(names, on_disk, "the generator reports the files it wrote");
    (dir, names)
}

/// The `cnspr...(N)` references of a page's SEE ALSO section, read from the roff source.
fn see_also(roff: &str) -> Vec<String> {
    let mut lines = roff
        .lines()
        .skip_while(|l| !l.starts_with(".SH") || !l.contains("SEE ALSO"));
    assert!(lines.next().is_some(), "no SEE ALSO section in:\n{roff}");
    let text: String = lines
        .take_while(|l| !l.starts_with(".SH"))
        .filter(|l| !l.starts_with('.'))
        .collect::<Vec<_>>()
        .join(" ")
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "");
    text.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn every_command_has_a_page() {
    let (_dir, names) = generate();
    let expected = expected_pages();
    assert!(expected.contains("cnspr-send.1") && expected.contains("cnspr-kv-put.1"));
    // Every top-level subcommand, and the nested ones.
    for sub in cnspr::cli::Cli::command().get_subcommands() {
        if sub.get_name() != "help" {
            assert!(
                names.contains(&format!("cnspr-{}.1", sub.get_name())),
                "no page for `cnspr {}`",
                sub.get_name()
            );
        }
    }
    let missing: Vec<_> = expected.difference(&names).collect();
    let extra: Vec<_> = names.difference(&expected).collect();
    assert!(missing.is_empty(), "commands without a page: {missing:?}");
    assert!(extra.is_empty(), "pages without a command: {extra:?}");
}

#[test]
fn see_also_names_existing_pages() {
    let (dir, names) = generate();
    for name in &names {
        let roff = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let refs = see_also(&roff);
        assert!(!refs.is_empty(), "{name}: empty SEE ALSO");
        for r in refs {
            let (page, section) = r
                .strip_suffix(')')
                .and_then(|r| r.split_once('('))
                .unwrap_or_else(|| panic!("{name}: SEE ALSO entry {r:?} is not NAME(SECTION)"));
            assert!(!section.is_empty(), "{name}: {r}");
            if page.starts_with("cnspr") {
                assert!(
                    names.contains(&format!("{page}.{section}")),
                    "{name}: SEE ALSO names {r}, which is not generated"
                );
                assert_ne!(format!("{page}.{section}"), *name, "{name} names itself");
            }
        }
        if name != "cnspr.1" {
            assert!(
                roff.contains("\\fBcnspr\\fR(1)"),
                "{name}: SEE ALSO does not name cnspr(1)"
            );
        }
    }
}

/// `man -l PAGE` as plain text (no pager, no hyphenation or justification, ASCII), and
/// its warnings; None, with the reason printed, where man-db's `man` is not usable.
fn man(page: &Path) -> Option<(String, String)> {
    let out = Command::new("man")
        .args(["--warnings", "--nh", "--nj", "-l"])
        .arg(page)
        .env("LC_ALL", "C")
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            println!("skipping the rendering checks: cannot run `man` ({e}); install man-db");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && stdout.trim().is_empty() {
        // A minimised system's placeholder `man`, or one without groff.
        println!(
            "skipping the rendering checks: `man -l` does not render here ({}): {}",
            out.status,
            stderr.trim()
        );
        return None;
    }
    assert!(
        out.status.success(),
        "man -l {}: {}\n{stderr}",
        page.display(),
        out.status
    );
    // Overstrike (x\bx) in case the formatting was kept anyway.
    let mut text = String::with_capacity(stdout.len());
    for c in stdout.chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    Some((text, stderr))
}

#[test]
fn man_renders_every_page_with_its_options() {
    let (dir, _names) = generate();

    let send = dir.path().join("cnspr-send.1");
    let Some((text, _)) = man(&send) else { return };
    for needle in [
        "CNSPR-SEND(1)",
        "--reply",
        "--all",
        "--timeout",
        "SEE ALSO",
        "cnspr(1)",
    ] {
        assert!(
            text.contains(needle),
            "`man -l cnspr-send.1` lacks {needle}:\n{text}"
        );
    }

    let mut checked = 0;
    for (cmd, page) in commands() {
        let path = dir.path().join(format!("{page}.1"));
        let (text, warnings) = man(&path).expect("man rendered cnspr-send.1 above");
        assert!(warnings.trim().is_empty(), "{page}: man warns:\n{warnings}");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("{}(1)", page.to_uppercase())),
            "{page}: no page header:\n{text}"
        );
        if let Some(about) = cmd.get_about() {
            let about = about
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                words.contains(&about),
                "{page}: lacks its description {about:?}:\n{text}"
            );
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let shown = match (arg.get_long(), arg.get_short()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(short)) => format!("-{short}"),
                (None, None) => arg.get_id().as_str().to_uppercase(),
            };
            assert!(
                text.contains(&shown),
                "{page}: option {shown} missing:\n{text}"
            );
            if let Some(help) = arg.get_help() {
                let help = help
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(
                    words.contains(&help),
                    "{page}: help of {shown} missing: {help:?}"
                );
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_page = format!("{page}-{}(1)", sub.get_name());
            assert!(
                words.contains(&sub_page),
                "{page}: subcommand {sub_page} not listed"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, expected_pages().len());
}

/// Every visible command of the built tree (global options propagated) with its page name.
fn commands() -> Vec<(clap::Command, String)> {
    fn walk(cmd: &clap::Command, page: String, out: &mut Vec<(clap::Command, String)>) {
        out.push((cmd.clone(), page.clone()));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, format!("{page}-{}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&command_tree(), "cnspr".to_owned(), &mut out);
    out
}
