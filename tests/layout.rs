//! `scripts/check-layout` catches what it is for: an import cycle between files and a
//! file over the line limit, on fixtures; and it passes on this repository.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-layout"))
        .arg(dir)
        .output()
        .expect("python3 runs scripts/check-layout");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

#[test]
fn an_introduced_cycle_fails_and_its_removal_passes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(
        &src,
        &[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("a.rs", "use crate::b::B;\npub struct A(pub B);\n"),
            ("b.rs", "pub struct B;\n"),
            // c reaches a through an inline path, not a `use`.
            (
                "c.rs",
                "pub fn f() -> crate::a::A { crate::a::A(crate::b::B) }\n",
            ),
        ],
    );
    let (ok, text) = check(&src);
    assert!(ok, "a DAG was refused:\n{text}");
    // b now uses c, which uses a, which uses b: a cycle of three files.
    write(
        &src,
        &[(
            "b.rs",
            "pub struct B;\npub fn g() { let _ = super::c::f(); }\n",
        )],
    );
    let (ok, text) = check(&src);
    assert!(!ok, "the cycle was not caught:\n{text}");
    assert!(text.contains("import cycle between"), "{text}");
    for f in ["a.rs", "b.rs", "c.rs"] {
        assert!(text.contains(f), "{f} missing from the report:\n{text}");
    }
}

#[test]
fn a_parent_reexporting_its_children_is_no_cycle_but_defining_for_them_is() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(
        &src,
        &[
            ("lib.rs", "pub mod m;\n"),
            (
                "m/mod.rs",
                "mod x;\nmod y;\npub use x::X;\npub fn run() { y::go() }\n",
            ),
            ("m/x.rs", "pub struct X;\n"),
            // y names X through the parent's re-export: the edge goes to x.rs.
            ("m/y.rs", "use super::X;\npub fn go() { let _ = X; }\n"),
        ],
    );
    let (ok, text) = check(&src);
    assert!(ok, "a re-export was taken for a cycle:\n{text}");
    // Now the parent defines something its child uses, and uses the child.
    write(
        &src,
        &[
            (
                "m/mod.rs",
                "mod x;\nmod y;\npub use x::X;\npub struct Ctx;\npub fn run() { y::go() }\n",
            ),
            (
                "m/y.rs",
                "use super::{Ctx, X};\npub fn go() { let _ = (X, Ctx); }\n",
            ),
        ],
    );
    let (ok, text) = check(&src);
    assert!(!ok, "parent/child cycle not caught:\n{text}");
    assert!(
        text.contains("m/mod.rs") && text.contains("m/y.rs"),
        "{text}"
    );
}

#[test]
fn a_file_over_the_limit_fails() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long: String = (0..601)
        .map(|i| format!("pub const C{i}: u32 = {i};\n"))
        .collect();
    write(&src, &[("lib.rs", "pub mod big;\n"), ("big.rs", &long)]);
    let (ok, text) = check(&src);
    assert!(!ok, "{text}");
    assert!(text.contains("big.rs: 601 lines"), "{text}");
}
