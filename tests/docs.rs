//! The checked-in completions/ and man/ must be what examples/gen-docs.rs
//! writes from the current clap definition.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[path = "../examples/gen-docs.rs"]
#[allow(dead_code)]
mod gen_docs;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.map(Result::unwrap) {
            if e.path().is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                out.insert(name, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn completions_and_man_pages_are_up_to_date() {
    let tmp = tempfile::tempdir().unwrap();
    let written = gen_docs::generate(tmp.path()).expect("generate docs");
    assert!(!written.is_empty());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for dir in gen_docs::OUTPUT_DIRS {
        let want = files(&tmp.path().join(dir));
        let have = files(&repo.join(dir));
        for (name, body) in &want {
            match have.get(name) {
                None => stale.push(format!("{dir}/{name} is missing")),
                Some(b) if b != body => stale.push(format!("{dir}/{name} differs")),
                Some(_) => {}
            }
        }
        for name in have.keys().filter(|n| !want.contains_key(*n)) {
            stale.push(format!("{dir}/{name} is no longer generated"));
        }
    }
    assert!(
        stale.is_empty(),
        "completions/ and man/ are stale ({}); run `{}` and commit the result",
        stale.join(", "),
        gen_docs::REGENERATE
    );
}

/// Every subcommand gets a page and appears in the completions, so a new
/// subcommand cannot be added without its documentation.
#[test]
fn every_subcommand_is_documented() {
    use clap::CommandFactory;
    let tmp = tempfile::tempdir().unwrap();
    gen_docs::generate(tmp.path()).unwrap();
    let bash = fs::read_to_string(tmp.path().join("completions/dlock.bash")).unwrap();
    let top = fs::read_to_string(tmp.path().join("man/dlock.1")).unwrap();
    assert!(top.contains("EXIT STATUS"), "dlock.1 lacks the exit codes");
    for sub in dlock::cli::Cli::command().get_subcommands() {
        let name = sub.get_name();
        if sub.is_hide_set() {
            // Internal subcommands are neither offered nor documented.
            assert!(
                !bash.contains(&format!("dlock__subcmd__{name})")),
                "bash completes hidden {name}"
            );
            assert!(!tmp.path().join(format!("man/dlock-{name}.1")).exists());
            continue;
        }
        if name == "help" {
            continue;
        }
        let page = tmp.path().join(format!("man/dlock-{name}.1"));
        assert!(page.exists(), "no man page for {name}");
        assert!(
            bash.contains(&format!("dlock__subcmd__{name})")),
            "bash completion lacks {name}"
        );
        assert!(
            top.contains(&format!("dlock\\-{name}(1)")),
            "dlock.1 does not list {name}"
        );
    }
}

/// Adding a backend must not change the generated files: they name no
/// scheme from `dlock urls` but the two of `--url`'s examples.
#[test]
fn the_generated_files_list_no_schemes() {
    let urls = std::process::Command::new(env!("CARGO_BIN_EXE_dlock"))
        .arg("urls")
        .output()
        .unwrap();
    let urls = String::from_utf8(urls.stdout).unwrap();
    let schemes: Vec<&str> = urls
        .lines()
        .filter_map(|l| l.split_once("://"))
        .map(|(s, _)| s)
        .collect();
    assert!(schemes.len() >= 9, "{urls}");
    let tmp = tempfile::tempdir().unwrap();
    for file in gen_docs::generate(tmp.path()).unwrap() {
        let text = fs::read_to_string(tmp.path().join(&file))
            .unwrap()
            .replace('\\', "");
        for s in schemes
            .iter()
            .filter(|s| !matches!(**s, "redis" | "sqlite"))
        {
            assert!(
                !text.contains(&format!("{s}://")),
                "{} names {s}://",
                file.display()
            );
        }
    }
}
