//! The shell completions offer held lock names and signal names, tried in
//! real bash, fish and zsh with the real binary on PATH.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::sqlite::Sqlite;
use common::{code, Ctx};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/completions");

/// A backend holding `deploy` and `nightly job`, and a PATH with dlock first.
fn world() -> (Ctx, String) {
    let ctx = Ctx::new(std::sync::Arc::new(Sqlite::new()));
    ctx.acquire("deploy", "1m");
    ctx.acquire("nightly job", "1m");
    let bin = common::dlock_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (ctx, path)
}

fn shell(ctx: &Ctx, path: &str, program: &str, args: &[&str], env_url: bool) -> String {
    let mut c = Command::new(program);
    c.args(args).env("PATH", path);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DLOCK_")) {
        c.env_remove(k);
    }
    c.env("DLOCK_PREFIX", &ctx.prefix);
    if env_url {
        c.env("DLOCK_URL", ctx.url());
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn shell_path(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn require(name: &str) -> PathBuf {
    shell_path(name)
        .unwrap_or_else(|| panic!("{name} not found: scripts/test installs it (scripts/prereqs)"))
}

/// What bash's completion offers for the line typed so far.
fn bash(ctx: &Ctx, path: &str, line: &str, env_url: bool) -> Vec<String> {
    let script = format!(
        r#"source {DIR}/dlock.bash
COMP_LINE={line:?}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<<"$COMP_LINE"
[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
_dlock_with_names dlock "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let bash = require("bash");
    let out = shell(ctx, path, bash.to_str().unwrap(), &["-c", &script], env_url);
    out.lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_held_lock_names_where_a_name_goes() {
    let (ctx, path) = world();
    let names = ["deploy", "nightly\\ job"];
    assert_eq!(bash(&ctx, &path, "dlock exec ", true), names);
    assert_eq!(bash(&ctx, &path, "dlock release --force ", true), names);
    assert_eq!(bash(&ctx, &path, "dlock status deploy ", true), names);
    assert_eq!(bash(&ctx, &path, "dlock exec dep", true), ["deploy"]);
    // The backend typed on the line, not only the environment's.
    let line = format!("dlock --url {} exec ", ctx.url());
    assert_eq!(bash(&ctx, &path, &line, false), names);
    // Not where something else goes: after the name, or an option's value.
    assert!(!bash(&ctx, &path, "dlock exec deploy ", true).contains(&"deploy".to_string()));
    assert!(!bash(&ctx, &path, "dlock exec --wait ", true).contains(&"deploy".to_string()));
}

#[test]
fn bash_completes_signal_names() {
    let (ctx, path) = world();
    let got = bash(&ctx, &path, "dlock exec --on-lost-signal ", true);
    for sig in ["TERM", "INT", "HUP", "KILL"] {
        assert!(got.contains(&sig.to_string()), "{got:?}");
    }
}

#[test]
fn fish_completes_held_lock_names_and_signals() {
    let (ctx, path) = world();
    let fish = require("fish");
    let run = |line: &str| {
        let script = format!("source {DIR}/dlock.fish; complete -C {line:?}");
        shell(&ctx, &path, fish.to_str().unwrap(), &["-c", &script], true)
    };
    let out = run("dlock exec ");
    assert!(out.contains("deploy\theld lock"), "{out}");
    assert!(out.contains("nightly job\theld lock"), "{out}");
    assert!(!run("dlock exec deploy ").contains("held lock"));
    assert!(run("dlock exec --on-lost-signal ").contains("TERM"));
}

#[test]
fn zsh_lists_held_lock_names_for_its_name_arguments() {
    let (ctx, path) = world();
    let zsh = require("zsh");
    let text = std::fs::read_to_string(format!("{DIR}/_dlock")).unwrap();
    let wired = text.matches(":_dlock_lock_names'").count();
    assert_eq!(
        wired, 5,
        "acquire, release, exec, renew and status name arguments"
    );
    // compadd only works inside completion: stand in for it to see what is offered.
    let script = format!(
        "autoload -U compinit; compinit -u -D; source {DIR}/_dlock
compadd() {{ print -rl -- ${{(P)${{@[-1]}}}} }}
words=(exec ''); CURRENT=2; _dlock_lock_names"
    );
    let out = shell(&ctx, &path, zsh.to_str().unwrap(), &["-fc", &script], true);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["deploy", "nightly job"]);
}
