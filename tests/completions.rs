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
    bash_in(
        ctx,
        path,
        line,
        env_url,
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
}

/// [`bash`] in the working directory `dir`.
fn bash_in(ctx: &Ctx, path: &str, line: &str, env_url: bool, dir: &Path) -> Vec<String> {
    let script = format!(
        r#"cd {dir:?} || exit 1
source {DIR}/dlock.bash
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
    assert_eq!(bash(&ctx, &path, "dlock watch deploy ", true), names);
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
        wired, 10,
        "acquire, release, exec, renew, status and watch name arguments, and --also of the first four"
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

/// A directory holding one file, for the file names a command's arguments
/// complete to.
fn dir_with_a_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report-input.txt"), "").unwrap();
    dir
}

/// Options that take a value (--slots N, --token-id ID) are skipped: the
/// name still completes after them, in bash, fish and zsh.
#[test]
fn lock_names_complete_after_options_that_take_a_value() {
    let (ctx, path) = world();
    let lines = [
        "dlock exec --slots 3 ",
        "dlock acquire --slots 2 --wait 1s ",
        "dlock release --force --token-id 032df891 ",
        "dlock exec -E 0 --fair ",
    ];
    for line in lines {
        assert_eq!(
            bash(&ctx, &path, line, true),
            ["deploy", "nightly\\ job"],
            "{line}"
        );
        let out = fish(&ctx, &path, line, Path::new("/"));
        let offered: Vec<&str> = out.lines().collect();
        assert_eq!(
            offered,
            ["deploy\theld lock", "nightly job\theld lock"],
            "{line}"
        );
        assert_eq!(
            zsh(&ctx, &path, line, Path::new("/")),
            ["deploy", "nightly job"],
            "{line}"
        );
    }
}

/// The value of --also is a lock name as well, in bash, fish and zsh; after
/// it, exec's command still comes where it did.
#[test]
fn also_completes_held_lock_names() {
    let (ctx, path) = world();
    for line in ["dlock exec deploy --also ", "dlock release --also "] {
        assert_eq!(
            bash(&ctx, &path, line, true),
            ["deploy", "nightly\\ job"],
            "{line}"
        );
        let out = fish(&ctx, &path, line, Path::new("/"));
        assert!(out.contains("nightly job\theld lock"), "{line}: {out}");
        assert_eq!(
            zsh(&ctx, &path, line, Path::new("/")),
            ["deploy", "nightly job"],
            "{line}"
        );
    }
    let got = bash(&ctx, &path, "dlock exec --also deploy nightly ech", true);
    assert!(got.contains(&"echo".to_string()), "{got:?}");
}

/// After the lock name of `exec` comes a command: its name completes to
/// commands, its arguments to files, and dlock's own options are not offered
/// there (bash, fish and zsh).
#[test]
fn exec_command_completes_as_a_command() {
    let (ctx, path) = world();
    let dir = dir_with_a_file();
    let dlock_option = |w: &String| w.starts_with("--lease") || w.starts_with("--wait");
    for line in [
        "dlock exec deploy ech",
        "dlock exec deploy -- ech",
        "dlock exec --wait 1s deploy ech",
    ] {
        let got = bash_in(&ctx, &path, line, true, dir.path());
        assert!(got.contains(&"echo".to_string()), "{line}: {got:?}");
        assert!(!got.iter().any(dlock_option), "{line}: {got:?}");
        let got = fish(&ctx, &path, line, dir.path());
        assert!(got.lines().any(|l| l.starts_with("echo")), "{line}: {got}");
        assert!(!got.contains("--lease"), "{line}: {got}");
        let got = zsh(&ctx, &path, line, dir.path());
        assert!(got.contains(&"echo".to_string()), "{line}: {got:?}");
        assert!(!got.iter().any(dlock_option), "{line}: {got:?}");
    }
    for line in ["dlock exec deploy ", "dlock exec deploy -- "] {
        let got = bash_in(&ctx, &path, line, true, dir.path());
        assert!(got.contains(&"echo".to_string()), "{line}: {got:?}");
        assert!(!got.iter().any(dlock_option), "{line}: {got:?}");
        let got = zsh(&ctx, &path, line, dir.path());
        assert!(!got.iter().any(dlock_option), "{line}: {got:?}");
    }
    for line in ["dlock exec deploy cat ", "dlock exec deploy -- cat -n "] {
        let got = bash_in(&ctx, &path, line, true, dir.path());
        assert_eq!(got, ["report-input.txt"], "{line}");
        let got = fish(&ctx, &path, line, dir.path());
        assert!(got.contains("report-input.txt"), "{line}: {got}");
        assert!(!got.contains("--lease"), "{line}: {got}");
        let got = zsh(&ctx, &path, line, dir.path());
        assert!(
            got.contains(&"report-input.txt".to_string()),
            "{line}: {got:?}"
        );
    }
    // The command's own options, not dlock's.
    let got = fish(&ctx, &path, "dlock exec deploy cat --", dir.path());
    assert!(
        got.contains("--number") && !got.contains("--lease"),
        "{got}"
    );
    let got = zsh(&ctx, &path, "dlock exec deploy cat --", dir.path());
    assert!(!got.iter().any(dlock_option), "{got:?}");
    // Before the name, and with -c STRING instead of a command, dlock's options stay.
    let got = bash(&ctx, &path, "dlock exec --wa", true);
    assert_eq!(got, ["--wait"]);
    let got = bash(&ctx, &path, "dlock exec -c 'true' deploy --wa", true);
    assert_eq!(got, ["--wait"]);
}

/// What fish's completion offers for `line`, typed in `dir`.
fn fish(ctx: &Ctx, path: &str, line: &str, dir: &Path) -> String {
    let fish = require("fish");
    let script = format!("cd {dir:?}; source {DIR}/dlock.fish; complete -C {line:?}");
    shell(ctx, path, fish.to_str().unwrap(), &["-c", &script], true)
}

/// Types `line` and TAB into an interactive zsh (on a pseudo-terminal, with
/// compinit and completions/_dlock) and prints every match its completion
/// adds, one per line: the real completion system, not a stand-in.
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty || exit 1
zpty z zsh -f -i
zpty -w z "PS1='' PROMPT_EOL_MARK=''; cd ${(q)2}; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd() {
  local a; for a; do case $a in (-O|-A|-D) builtin compadd "$@"; return;; (--) break;; esac; done
  local -a hits; builtin compadd -O hits "$@"
  print -rl -- "<""HIT>"${^hits}
  builtin compadd "$@"
}'
zpty -w z '_capture() { zle complete-word; print -r -- "<""DONE>"; }; zle -N _capture; bindkey "^I" _capture'
zpty -w z "zstyle ':completion:*' list-prompt ''; zstyle ':completion:*' menu no"
zpty -w -n z "$3"$'\t'
while zpty -r z out; do
  [[ $out == *'<DONE>'* ]] && break
  [[ $out == *'<HIT>'* ]] && print -r -- "${${out#*<HIT>}%$'\r'}"
done
zpty -d z
"#;

/// What zsh's completion offers for `line`, typed in `dir`.
fn zsh(ctx: &Ctx, path: &str, line: &str, dir: &Path) -> Vec<String> {
    let zsh = require("zsh");
    let args = [
        "60",
        zsh.to_str().unwrap(),
        "-fc",
        ZSH_DRIVER,
        "zsh",
        DIR,
        dir.to_str().unwrap(),
        line,
    ];
    let out = shell(ctx, path, "timeout", &args, true);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}
