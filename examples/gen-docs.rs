//! Writes the shell completions (completions/) and man pages (man/) from the
//! clap definition in src/cli.rs. Run it after changing the CLI:
//!
//!     cargo run --example gen-docs
//!
//! tests/docs.rs regenerates into a temporary directory and fails when the
//! checked-in files differ, so the two cannot drift apart unnoticed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory, ValueEnum};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// The command that brings completions/ and man/ up to date.
pub const REGENERATE: &str = "cargo run --example gen-docs";

/// The directories this generator owns entirely: every file in them is its output.
pub const OUTPUT_DIRS: [&str; 2] = ["completions", "man"];

fn main() {
    // An optional argument names another root, for trying the output out.
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    match generate(&root) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("gen-docs: {e}");
            std::process::exit(1);
        }
    }
}

/// Replaces the contents of `root`/completions and `root`/man; returns the
/// files written, relative to `root`.
pub fn generate(root: &Path) -> io::Result<Vec<PathBuf>> {
    for dir in OUTPUT_DIRS {
        let dir = root.join(dir);
        // Start empty so that a removed subcommand leaves no stale page behind.
        if dir.exists() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.is_file() {
                    fs::remove_file(path)?;
                }
            }
        }
        fs::create_dir_all(dir)?;
    }
    let mut written = Vec::new();

    let mut cmd = visible(&dlock::cli::Cli::command());
    let bin = cmd.get_name().to_string();
    let takes_value = value_options(&cmd);
    for &shell in Shell::value_variants() {
        let path = clap_complete::generate_to(shell, &mut cmd, &bin, root.join("completions"))?;
        let text = fs::read_to_string(&path)?;
        fs::write(&path, with_lock_names(shell, text, &takes_value))?;
        written.push(relative(root, &path));
    }

    // The help subcommand only repeats --help; man pages cover it.
    let mut cmd = dlock::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect_pages(&cmd, None, &mut pages);
    let names: Vec<String> = pages.iter().map(page_name).collect();
    // Every page names the program and its version, subcommand pages included.
    let source = format!("{bin} {}", cmd.get_version().unwrap_or_default());
    for (page, name) in pages.iter().zip(&names) {
        let path = root.join("man").join(format!("{name}.1"));
        fs::write(&path, man_page(page, name, &source, &names)?)?;
        written.push(relative(root, &path));
    }
    Ok(written)
}

/// A copy of `cmd` without hidden subcommands, which clap_complete would
/// otherwise offer (clap has no way to remove a subcommand, so rebuild).
/// Copies what completion scripts use: names, help, arguments, groups and the
/// settings that shape parsing.
fn visible(cmd: &Command) -> Command {
    // Command wants 'static strings; this program is short-lived.
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mut out = Command::new(leak(cmd.get_name()))
        .subcommand_required(cmd.is_subcommand_required_set())
        .arg_required_else_help(cmd.is_arg_required_else_help_set())
        .propagate_version(cmd.is_propagate_version_set())
        .disable_help_subcommand(cmd.is_disable_help_subcommand_set());
    if let Some(v) = cmd.get_version() {
        out = out.version(leak(v));
    }
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    if let Some(a) = cmd.get_long_about() {
        out = out.long_about(a.clone());
    }
    for a in cmd.get_arguments() {
        out = out.arg(a.clone());
    }
    for g in cmd.get_groups() {
        out = out.group(g.clone());
    }
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible(s));
    }
    out
}

/// Every option that takes a value ("--lease", "-E", ...), in any visible
/// subcommand: the hand-written completion skips their values when it looks
/// for the lock name and exec's command.
fn value_options(cmd: &Command) -> Vec<String> {
    fn walk(cmd: &Command, out: &mut std::collections::BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if a.is_positional() || !a.get_action().takes_values() {
                continue;
            }
            out.extend(a.get_long().map(|l| format!("--{l}")));
            out.extend(a.get_short().map(|s| format!("-{s}")));
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(cmd, &mut out);
    out.into_iter().collect()
}

/// `words` as shell patterns for `case`, `sep` between them, wrapped before
/// a line grows past 72 characters with `wrap` (which carries the indent).
fn patterns(words: &[String], sep: &str, wrap: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            if line + sep.len() + w.len() > 72 {
                out.push_str(wrap);
                line = 0;
            } else {
                out.push_str(sep);
                line += sep.len();
            }
        }
        out.push_str(w);
        line += w.len();
    }
    out
}

/// Adds the completion of lock names (from `dlock status --names-only`) and
/// of exec's command to what clap generates, which knows only static values
/// and lists dlock's options where the command goes. Elvish and PowerShell
/// keep clap's completion alone.
fn with_lock_names(shell: Shell, text: String, takes_value: &[String]) -> String {
    match shell {
        Shell::Bash => {
            let (head, tail) = text
                .split_once("\nif [[ \"${BASH_VERSINFO[0]}\"")
                .expect("clap's bash script ends with its `complete` lines");
            let names = include_str!("completions/names.bash").replace(
                "@VALUE_OPTIONS@",
                &patterns(takes_value, " | ", " | \\\n                "),
            );
            format!(
                "{head}\n{}\nif [[ \"${{BASH_VERSINFO[0]}}\"{}",
                names.trim_end(),
                tail.replace("complete -F _dlock ", "complete -F _dlock_with_names ")
            )
        }
        Shell::Fish => {
            // clap's exec options apply up to the command, not inside it.
            let exec = "-n \"__fish_dlock_using_subcommand exec\"";
            let exec_options = "-n \"__fish_dlock_using_subcommand exec; and test (__fish_dlock_where) != command\"";
            let names = include_str!("completions/names.fish").replace(
                "@VALUE_OPTIONS@",
                &patterns(takes_value, " ", " \\\n                    "),
            );
            // --also takes a lock name: held names, not files.
            let also: Vec<String> = text
                .replace(exec, exec_options)
                .lines()
                .map(|l| match l.contains(" -l also ") {
                    true => format!(
                        "{} -x -a '(__fish_dlock_held_locks)'",
                        l.trim_end_matches(" -r")
                    ),
                    false => l.to_string(),
                })
                .collect();
            also.join("\n") + "\n" + &names
        }
        Shell::Zsh => {
            let names_arg = |l: &str| {
                l.starts_with("':name -- ")
                    || l.starts_with("'*::names -- ")
                    || l.starts_with("'*--also=")
            };
            let body: Vec<String> = text
                .lines()
                .map(|l| match names_arg(l) {
                    true => l.replace(":_default'", ":_dlock_lock_names'"),
                    // `*:::` hands the command's own words alone to
                    // _cmdambivalent (clap's `*::` starts them at the lock name).
                    false => match l.strip_prefix("'*::command -- ") {
                        Some(rest) => format!("'*:::command -- {rest}"),
                        None => l.to_string(),
                    },
                })
                .collect();
            let body = body.join("\n") + "\n";
            let (head, tail) = body
                .split_once("\nif [ \"$funcstack[1]\" = \"_dlock\" ]; then")
                .expect("clap's zsh script ends by registering _dlock");
            format!(
                "{head}\n{}\n\nif [ \"$funcstack[1]\" = \"_dlock\" ]; then{tail}",
                include_str!("completions/names.zsh").trim_end()
            )
        }
        _ => text,
    }
}

fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// The command and, recursively, every visible subcommand: one page each.
fn collect_pages(cmd: &Command, parent: Option<&str>, out: &mut Vec<Command>) {
    let mut cmd = cmd.clone();
    if let Some(p) = parent {
        // `dlock acquire` is documented as dlock-acquire(1), the git convention.
        let name = format!("{p}-{}", cmd.get_name());
        cmd = cmd.display_name(name);
    }
    let this = page_name(&cmd);
    let subs: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    out.push(cmd);
    for sub in &subs {
        collect_pages(sub, Some(&this), out);
    }
}

fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// One man page: clap_mangen's standard sections, then sections made from the
/// after_help text (examples, exit codes), the environment, and cross-references.
fn man_page(cmd: &Command, name: &str, source: &str, all: &[String]) -> io::Result<String> {
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .source(source)
        .manual("User Commands");
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut part = |f: &dyn Fn(&mut Vec<u8>) -> io::Result<()>| -> io::Result<()> {
        let mut buf = Vec::new();
        f(&mut buf)?;
        parts.push(buf);
        Ok(())
    };
    part(&|w| man.render_title(w))?;
    part(&|w| man.render_name_section(w))?;
    part(&|w| man.render_synopsis_section(w))?;
    part(&|w| man.render_description_section(w))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        part(&|w| man.render_options_section(w))?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        part(&|w| man.render_subcommands_section(w))?;
    }

    let mut extra = Roff::new();
    if let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        after_help_sections(&mut extra, &text.to_string());
    }
    environment_section(&mut extra, cmd);
    see_also_section(&mut extra, name, all);
    let mut buf = Vec::new();
    extra.to_writer(&mut buf)?;
    parts.push(buf);

    // Every rendered part starts with roff's apostrophe preamble; keep the first only.
    let preamble = Roff::new().render();
    let mut out = String::new();
    for (i, p) in parts.into_iter().enumerate() {
        let s = String::from_utf8(p).map_err(io::Error::other)?;
        out.push_str(if i == 0 {
            &s
        } else {
            s.strip_prefix(&preamble).unwrap_or(&s)
        });
    }
    Ok(out)
}

/// after_help text is a run of blocks separated by blank lines, each block
/// optionally headed by a `Title:` line that becomes a section. Blocks with
/// indented lines (examples, the exit-code table) keep their layout; other
/// blocks are prose paragraphs.
fn after_help_sections(roff: &mut Roff, text: &str) {
    let mut in_section = false;
    for block in text.split("\n\n") {
        let mut lines: Vec<&str> = block.lines().collect();
        if let Some(first) = lines.first() {
            if let Some(title) = first.strip_suffix(':').filter(|t| !t.starts_with(' ')) {
                let title = match title {
                    // The name man(7) gives this section.
                    "Exit codes" => "EXIT STATUS".to_string(),
                    t => t.to_uppercase(),
                };
                roff.control("SH", [title.as_str()]);
                in_section = true;
                lines.remove(0);
            }
        }
        if lines.is_empty() {
            continue;
        }
        if !in_section {
            roff.control("SH", ["NOTES"]);
            in_section = true;
        }
        if lines.iter().any(|l| l.starts_with(' ')) {
            let indent = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            roff.control("PP", []);
            roff.control("RS", ["4"]);
            roff.control("nf", []);
            for l in &lines {
                roff.text([roman(l.get(indent..).unwrap_or(l.trim_start()))]);
            }
            roff.control("fi", []);
            roff.control("RE", []);
        } else {
            roff.control("PP", []);
            roff.text([roman(lines.join(" "))]);
        }
    }
}

/// The environment variables that stand in for options, from the clap `env` settings.
fn environment_section(roff: &mut Roff, cmd: &Command) {
    let vars: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| Some((a.get_env()?.to_string_lossy().into_owned(), a)))
        .collect();
    if vars.is_empty() {
        return;
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (var, arg) in vars {
        roff.control("TP", []);
        roff.text([bold(var)]);
        let flag = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| arg.get_id().to_string());
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        roff.text([roman(format!(
            "{help}. The option {flag} takes precedence."
        ))]);
    }
}

fn see_also_section(roff: &mut Roff, name: &str, all: &[String]) {
    let refs: Vec<String> = all
        .iter()
        .filter(|n| n.as_str() != name)
        .map(|n| format!("{n}(1)"))
        .collect();
    if refs.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(refs.join(", "))]);
}
