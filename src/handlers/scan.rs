//! Walking the handler directory (docs/handlers.md). Synchronous and cheap: one
//! `readdir` per directory and one `stat` per entry, no caching, so a file
//! added, removed or chmodded is seen by the very next scan.
//!
//! Measured on a 2-core VM shared with other jobs, warm cache: a tree of 100
//! handlers in 40 directories scans in about 1.1 ms in a debug build and
//! 0.45-0.55 ms in a release build (`scan_100_handlers_is_cheap` prints it with
//! `--nocapture`). Scanning before every dispatch is therefore affordable, and
//! needs no cache that could miss a change.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::event::{EventKind, Origin};
use super::layout::HandlerSpec;

/// Deepest directory level walked below the handler directory.
pub const MAX_DEPTH: usize = 16;
/// Most directory entries examined in one scan; the rest are ignored with a warning.
pub const MAX_ENTRIES: usize = 10_000;

/// The result of one scan: handlers sorted by `rel`, and problems found on the way
/// (unusable names, non-executable files, broken symlinks, loops, limits).
/// Warnings repeat on every scan: log them when the set changes, not each time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerSet {
    pub handlers: Vec<HandlerSpec>,
    pub warnings: Vec<String>,
}

impl HandlerSet {
    /// The handlers to run for an event, in `rel` order. `origin` is the sender
    /// for messages, the peer concerned for peer events, `None` for daemon events.
    pub fn matching<'a>(
        &'a self,
        kind: EventKind,
        tag: &str,
        origin: Option<&Origin<'_>>,
    ) -> Vec<&'a HandlerSpec> {
        self.handlers
            .iter()
            .filter(|h| h.matches(kind, tag, origin))
            .collect()
    }
}

/// Scans `dir` recursively. A missing directory gives an empty set; any other
/// problem is a warning, never an error.
pub fn scan(dir: &Path) -> HandlerSet {
    let mut walk = Walk::default();
    let root = match std::path::absolute(dir) {
        Ok(root) => root,
        Err(e) => {
            walk.warn(format!("{}: {e}", dir.display()));
            return walk.set;
        }
    };
    match fs::metadata(&root) {
        Ok(meta) if meta.is_dir() => walk.dir(&root, "", 0, &meta),
        Ok(_) => walk.warn(format!(
            "handler directory {} is not a directory",
            root.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => walk.warn(format!("handler directory {}: {e}", root.display())),
    }
    walk.set.handlers.sort_by(|a, b| a.rel.cmp(&b.rel));
    walk.set
}

/// Names never taken as handlers: hidden files, editor backups (`x~`) and
/// Emacs auto-save files (`#x#`).
fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.len() > 1 && name.starts_with('#') && name.ends_with('#'))
}

#[derive(Default)]
struct Walk {
    set: HandlerSet,
    entries: usize,
    overflowed: bool,
    /// (dev, ino) of the directories from the root to the current one.
    ancestors: Vec<(u64, u64)>,
}

impl Walk {
    fn warn(&mut self, msg: String) {
        self.set.warnings.push(msg);
    }

    fn dir(&mut self, dir: &Path, rel: &str, depth: usize, meta: &fs::Metadata) {
        let shown = if rel.is_empty() { "." } else { rel };
        let mut names: Vec<String> = Vec::new();
        match fs::read_dir(dir) {
            Ok(rd) => {
                for entry in rd {
                    match entry {
                        Ok(entry) => match entry.file_name().into_string() {
                            Ok(name) => names.push(name),
                            Err(raw) => self.warn(format!(
                                "{shown}/{}: name is not UTF-8, ignored",
                                raw.to_string_lossy()
                            )),
                        },
                        Err(e) => self.warn(format!("{shown}: {e}")),
                    }
                }
            }
            Err(e) => {
                self.warn(format!("{shown}: cannot read directory: {e}"));
                return;
            }
        }
        names.sort();
        self.ancestors.push((meta.dev(), meta.ino()));
        for name in names {
            if self.entries >= MAX_ENTRIES {
                if !self.overflowed {
                    self.overflowed = true;
                    self.warn(format!(
                        "more than {MAX_ENTRIES} entries in the handler directory; the rest are ignored"
                    ));
                }
                break;
            }
            self.entries += 1;
            if is_ignored_name(&name) {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            self.entry(&dir.join(&name), &child_rel, depth);
        }
        self.ancestors.pop();
    }

    fn entry(&mut self, path: &Path, rel: &str, depth: usize) {
        // `metadata` follows symlinks: a link to a file or directory counts as one.
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warn(format!("{rel}: broken symbolic link, ignored"));
                return;
            }
            Err(e) => {
                self.warn(format!("{rel}: {e}, ignored"));
                return;
            }
        };
        if meta.is_dir() {
            if self.ancestors.contains(&(meta.dev(), meta.ino())) {
                self.warn(format!("{rel}: symbolic link loop, not followed"));
            } else if depth + 1 > MAX_DEPTH {
                self.warn(format!("{rel}: deeper than {MAX_DEPTH} levels, ignored"));
            } else {
                self.dir(path, rel, depth + 1, &meta);
            }
        } else if !meta.is_file() {
            self.warn(format!("{rel}: not a regular file, ignored"));
        } else if meta.permissions().mode() & 0o111 == 0 {
            self.warn(format!(
                "{rel}: not executable, ignored (chmod +x to enable it)"
            ));
        } else {
            match HandlerSpec::from_rel(path.to_path_buf(), rel) {
                Ok(spec) => self.set.handlers.push(spec),
                Err(why) => self.warn(format!("{rel}: ignored: {why}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::PeerFilter;
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn write(root: &Path, rel: &str, mode: u32) -> PathBuf {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn exe(root: &Path, rel: &str) -> PathBuf {
        write(root, rel, 0o755)
    }

    fn rels(set: &HandlerSet, kind: EventKind, tag: &str, origin: Option<&Origin>) -> Vec<String> {
        set.matching(kind, tag, origin)
            .iter()
            .map(|h| h.rel.clone())
            .collect()
    }

    const PHONE: Origin<'static> = Origin {
        name: "phone",
        id: "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST",
        name_unique: true,
    };
    const LAPTOP: Origin<'static> = Origin {
        name: "laptop",
        id: "QRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCD",
        name_unique: true,
    };

    #[test]
    fn missing_dir_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(scan(&tmp.path().join("nope")), HandlerSet::default());
    }

    #[test]
    fn spec_layouts_and_filters() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for rel in ["a/b/c", "a/b/c.sh", "a/b.c.py", "a.b.c"] {
            exe(root, rel);
        }
        write(root, "a/b/c.txt", 0o644);
        exe(root, ".hidden/a.b.c");
        exe(root, "a/b/c.sh~");
        exe(root, "a/b/.c.sh.swp");
        exe(root, "a/b/#c#");
        exe(root, "n/@phone/x.sh");
        exe(root, "n/@[abcd-efgh]/x");
        exe(root, "n/#comment/x.py");
        exe(root, "bad name/x");
        exe(root, "daemon.sh");
        exe(root, "daemon/start");
        exe(root, "peer.sh");
        let set = scan(root);

        let msg = |t: &str, o: &Origin| rels(&set, EventKind::Message, t, Some(o));
        assert_eq!(
            msg("a.b.c", &PHONE),
            ["a.b.c", "a/b.c.py", "a/b/c", "a/b/c.sh"]
        );
        assert_eq!(
            msg("n.x", &PHONE),
            ["n/#comment/x.py", "n/@[abcd-efgh]/x", "n/@phone/x.sh"]
        );
        assert_eq!(msg("n.x", &LAPTOP), ["n/#comment/x.py"]);
        assert_eq!(msg("daemon.start", &PHONE), Vec::<String>::new());
        let d = |t: &str| rels(&set, EventKind::Daemon, t, None);
        assert_eq!(d("daemon.start"), ["daemon.sh", "daemon/start"]);
        assert_eq!(d("daemon.stop"), ["daemon.sh"]);
        let p = rels(&set, EventKind::Peer, "peer.seen", Some(&LAPTOP));
        assert_eq!(p, ["peer.sh"]);

        let spec = set
            .handlers
            .iter()
            .find(|h| h.rel == "n/@[abcd-efgh]/x")
            .unwrap();
        assert_eq!(spec.peer, Some(PeerFilter::IdPrefix("ABCDEFGH".into())));
        assert_eq!(spec.path, root.join("n/@[abcd-efgh]/x"));
        let text = set.warnings.join("\n");
        assert!(text.contains("a/b/c.txt: not executable"), "{text}");
        assert!(text.contains("bad name/x: ignored"), "{text}");
        assert_eq!(set.warnings.len(), 2, "{text}");
    }

    #[test]
    fn symlinks_followed_and_loops_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("h");
        let outside = tmp.path().join("outside");
        exe(&outside, "lib/run.sh");
        exe(&outside, "tool");
        fs::create_dir_all(&root).unwrap();
        symlink(outside.join("lib"), root.join("x")).unwrap();
        symlink(outside.join("tool"), root.join("y.z")).unwrap();
        symlink(&root, root.join("loop")).unwrap();
        symlink(".", root.join("x2")).unwrap();
        symlink(root.join("missing"), root.join("dangling")).unwrap();
        let set = scan(&root);
        let all: Vec<_> = set.handlers.iter().map(|h| h.rel.as_str()).collect();
        assert_eq!(all, ["x/run.sh", "y.z"]);
        assert_eq!(
            rels(&set, EventKind::Message, "x.run", Some(&PHONE)),
            ["x/run.sh"]
        );
        assert_eq!(rels(&set, EventKind::Message, "y", Some(&PHONE)), ["y.z"]);
        let text = set.warnings.join("\n");
        assert!(text.contains("loop: symbolic link loop"), "{text}");
        assert!(text.contains("x2: symbolic link loop"), "{text}");
        assert!(text.contains("dangling: broken symbolic link"), "{text}");
    }

    #[test]
    fn mutual_symlink_dirs_terminate() {
        // a/to_b -> b, b/to_a -> a: every path is cut at its first repeat.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        exe(root, "a/h");
        exe(root, "b/h");
        symlink(root.join("b"), root.join("a/to_b")).unwrap();
        symlink(root.join("a"), root.join("b/to_a")).unwrap();
        let set = scan(root);
        let all: Vec<_> = set.handlers.iter().map(|h| h.rel.as_str()).collect();
        assert_eq!(all, ["a/h", "a/to_b/h", "b/h", "b/to_a/h"]);
        assert_eq!(set.warnings.len(), 2, "{:?}", set.warnings);
    }

    #[test]
    fn depth_and_entry_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let deep: Vec<String> = (0..=MAX_DEPTH).map(|i| format!("d{i}")).collect();
        exe(tmp.path(), &format!("{}/h", deep[..MAX_DEPTH].join("/")));
        exe(tmp.path(), &format!("{}/h", deep.join("/")));
        let set = scan(tmp.path());
        assert_eq!(set.handlers.len(), 1);
        assert!(
            set.warnings[0].contains("deeper than 16"),
            "{:?}",
            set.warnings
        );

        let tmp = tempfile::tempdir().unwrap();
        for i in 0..MAX_ENTRIES + 5 {
            fs::File::create(tmp.path().join(format!(".f{i}"))).unwrap();
        }
        let set = scan(tmp.path());
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert!(set.warnings[0].contains("more than 10000 entries"));
    }

    #[test]
    fn changes_seen_by_next_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert!(scan(root).handlers.is_empty());
        let path = exe(root, "later/one.sh");
        assert_eq!(
            rels(&scan(root), EventKind::Message, "later.one", Some(&PHONE)),
            ["later/one.sh"]
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(scan(root).handlers.is_empty());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(scan(root).handlers.len(), 1);
        fs::remove_file(&path).unwrap();
        assert!(scan(root).handlers.is_empty());
    }

    #[test]
    fn relative_dir_gives_absolute_paths() {
        let tmp = tempfile::tempdir().unwrap();
        exe(tmp.path(), "x");
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(tmp.path(), &cwd);
        let set = scan(&rel);
        assert!(set.handlers[0].path.is_absolute());
    }

    /// `target` relative to `base` via `..` steps (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let common = base.ancestors().find(|a| target.starts_with(a)).unwrap();
        let ups = base.strip_prefix(common).unwrap().components().count();
        let mut out: PathBuf = std::iter::repeat_n("..", ups).collect();
        out.push(target.strip_prefix(common).unwrap());
        out
    }

    /// The worked example of docs/handlers.md.
    #[test]
    fn documented_example() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let files = [
            (
                "util/clipboard/set.sh",
                "message util.clipboard.set or util.clipboard.set.sh",
            ),
            (
                "util/clipboard/get.py",
                "message util.clipboard.get or util.clipboard.get.py",
            ),
            ("util/open-url", "message util.open-url"),
            ("notify.sh", "message notify or notify.sh"),
            (
                "notify/@phone/ring",
                "message notify.ring, only from peer @phone",
            ),
            (
                "notify/log.@[MFZWI3D].sh",
                "message notify.log or notify.log.sh, only from peer @[MFZWI3D]",
            ),
            (
                "#personal/backup.done.sh",
                "message backup.done or backup.done.sh",
            ),
            ("daemon.sh", "every daemon event"),
            ("daemon/stop", "daemon event daemon.stop"),
            (
                "peer/status_changed.py",
                "peer event peer.status_changed or peer.status_changed.py",
            ),
        ];
        for (rel, _) in files {
            exe(root, rel);
        }
        write(root, "README.md", 0o644);
        exe(root, ".git/hooks/x");
        exe(root, "backup.done.sh~");
        let set = scan(root);
        let mut got: Vec<_> = set
            .handlers
            .iter()
            .map(|h| (h.rel.as_str(), h.describe()))
            .collect();
        got.sort();
        let mut want: Vec<_> = files.iter().map(|(r, d)| (*r, d.to_string())).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            set.warnings,
            ["README.md: not executable, ignored (chmod +x to enable it)"]
        );
        let other = Origin {
            name: "desk",
            id: "AAAA",
            name_unique: true,
        };
        assert_eq!(
            rels(&set, EventKind::Message, "notify.ring", Some(&other)),
            Vec::<String>::new()
        );
        let phone = Origin {
            name: "phone",
            id: "MFZW-I3DX",
            name_unique: true,
        };
        assert_eq!(
            rels(&set, EventKind::Message, "notify.log", Some(&phone)),
            ["notify/log.@[MFZWI3D].sh"]
        );
        assert_eq!(
            rels(&set, EventKind::Daemon, "daemon.stop", None),
            ["daemon.sh", "daemon/stop"]
        );
    }

    #[test]
    fn scan_100_handlers_is_cheap() {
        let tmp = tempfile::tempdir().unwrap();
        for d in 0..20 {
            for f in 0..5 {
                exe(tmp.path(), &format!("grp{d}/sub/h{f}.sh"));
            }
        }
        assert_eq!(scan(tmp.path()).handlers.len(), 100);
        let runs = 50;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(scan(tmp.path()));
        }
        let each = start.elapsed() / runs;
        println!("scan of 100 handlers: {each:?}");
        // Generous bound: a loaded CI machine must not make this flaky.
        assert!(each < std::time::Duration::from_millis(100), "{each:?}");
    }
}
