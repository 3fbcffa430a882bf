//! dlock: a distributed mutex for shell scripts, cron jobs and CI pipelines.
//!
//! The library exists so that tools (the docs generator, tests) can reach the
//! clap definition; the binary in main.rs only calls [`main`].

// Helpers that only some backends use are dead in a build that leaves those
// backends out (see the cargo features); the default build, which has them
// all (build.rs then sets `all_backends`), is the one that lints for dead code.
#![cfg_attr(not(all_backends), allow(dead_code, unused_imports))]

mod backend;
mod backoff;
mod cancel;
pub mod cli;
mod commands;
mod duration;
pub mod error;
mod event;
mod guard;
mod holder;
mod lease;
mod names;
mod output;
mod report;
mod signals;
mod spawn;
mod startup;
mod supervise;
mod watch;

use clap::{CommandFactory, FromArgMatches};

/// dlock in an executable without std's `main` wrapper (main.rs, glibc).
pub fn start() -> ! {
    startup::without_std_main(main)
}

/// Runs dlock with the process's arguments and exits.
pub fn main() -> ! {
    // Before any thread starts, so that every thread inherits the signal mask.
    // While this thread parses and connects, the signal thread first fills
    // the cache of CPU features that the first reply's parsing needs. Nothing
    // that can block goes there (not the user's NSS lookup, which may wait on
    // a directory server): signals must always find the thread.
    signals::install(startup::warm_cpu_features);
    let (mut cli, empty_url) = parse();
    if let cli::Command::Urls = cli.command {
        // Needs no backend, nor a URL that parses.
        list_urls();
    }
    let g = &mut cli.global;
    let url = if let Some(e) = empty_url {
        Err(e)
    } else if g.url.is_some() && g.url_file.is_some() {
        Err(error::fail(
            error::USAGE,
            "both --url and --url-file (or DLOCK_URL and DLOCK_URL_FILE) are set: give one",
        ))
    } else {
        commands::resolve_url(g)
    };
    let g = &cli.global;
    // Parsed once, here: output scrubs its secrets from every line.
    let text = url.as_ref().ok().cloned().flatten();
    let url = url.and_then(|u| u.as_deref().map(backend::parse_url).transpose());
    let secrets = match (&url, &text) {
        (Ok(Some(u)), _) => u.secrets(),
        (Err(_), Some(t)) => backend::url::loose_secrets(t),
        _ => Vec::new(),
    };
    output::init(
        g.quiet,
        g.verbose,
        g.log_format == cli::LogFormat::Json,
        secrets,
    );
    if let Some(name) = cli.command.lock_name() {
        output::set_lock(name);
    }
    if let Ok(u) = &url {
        output::set_location(u.as_ref().map_or("the default SQLite file", |u| u.shown()));
    }
    let result = url.and_then(|url| match &cli.command {
        cli::Command::Acquire(a) => commands::acquire(g, url, a),
        cli::Command::Release(r) => commands::release(g, url, r),
        cli::Command::Status(s) => commands::status(g, url, s),
        cli::Command::Exec(e) => commands::exec(g, url, e),
        cli::Command::Renew(r) => commands::renew(g, url, r),
        cli::Command::Watch(w) => commands::watch(g, url, w),
        cli::Command::Keepalive(k) => commands::keepalive(g, url, k),
        cli::Command::Urls => unreachable!("handled before any URL is read"),
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = error::code_of(&e);
            let kind = if code == error::USAGE {
                "usage"
            } else {
                "error"
            };
            let msg = format!("error: {e:#}");
            output::event(output::Level::Error, kind, None, &msg, Default::default());
            std::process::exit(code);
        }
    }
}

/// `dlock urls`: each scheme's form, from the registry, so that a new
/// backend changes this output and not the generated help, man pages and
/// completions; a scheme whose backend was left out of the build says so.
fn list_urls() -> ! {
    let text: String = backend::SCHEMES
        .iter()
        .map(|s| match s.built_in() {
            true => format!("{}\n", s.form),
            false => format!(
                "{}  (not in this build: cargo feature `{}`)\n",
                s.form, s.feature
            ),
        })
        .collect();
    match output::result(&text) {
        Ok(()) => std::process::exit(error::OK),
        Err(why) => {
            output::stderr_line(&format!("dlock: error: could not write to stdout: {why}"));
            std::process::exit(error::OUTPUT);
        }
    }
}

/// The command line, parsed, with an error for an empty URL setting; exits
/// for --help, --version and usage errors, which need no backend.
fn parse() -> (cli::Cli, Option<anyhow::Error>) {
    let parsed = cli::Cli::command()
        .try_get_matches()
        .and_then(|m| cli::Cli::from_arg_matches(&m).map(|c| (c, m)));
    match parsed {
        Ok((mut c, m)) => {
            pick_url_source(&mut c.global, &m);
            let empty_url = empty_url_error(&c.global, &m);
            if let (cli::Command::Release(r), Some(rm)) =
                (&mut c.command, m.subcommand_matches("release"))
            {
                r.token_from_env =
                    rm.value_source("token") == Some(clap::parser::ValueSource::EnvVariable);
            }
            (c, empty_url)
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let written = match output::stdout_closed() {
                true => Err(std::io::Error::other("stdout is closed")),
                false => e.print(),
            };
            if written
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                output::die_of_broken_pipe();
            }
            if let Err(why) = written {
                output::stderr_line(&format!("dlock: error: could not write to stdout: {why}"));
                std::process::exit(error::OUTPUT);
            }
            std::process::exit(error::OK);
        }
        Err(e) => {
            let msg =
                cli::subcommand_error(&e).unwrap_or_else(|| one_line(&e.render().to_string()));
            let msg = output::cap_line(&output::cap_quotes(&msg));
            if json_log_requested() {
                output::init(false, 0, true, Vec::new());
                output::event(
                    output::Level::Error,
                    "usage",
                    None,
                    &msg,
                    Default::default(),
                );
            } else {
                output::stderr_line(&format!("dlock: {msg}"));
            }
            std::process::exit(error::USAGE);
        }
    }
}

/// Whether --log-format json (or DLOCK_LOG_FORMAT=json) was asked for, read
/// from the raw arguments: a usage error means clap could not parse them.
fn json_log_requested() -> bool {
    // args_os: an argument that is not UTF-8 is what clap just refused, and
    // std::env::args() would panic on it.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut from_args = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--log-format=") {
            from_args = Some(v.to_string());
        } else if a == "--log-format" {
            from_args = args.get(i + 1).cloned();
        }
    }
    from_args
        .or_else(|| std::env::var("DLOCK_LOG_FORMAT").ok())
        .is_some_and(|v| v == "json")
}

/// An empty URL or URL file is a mistake (a blank cron `DLOCK_URL=` line),
/// never a request for the local SQLite file: two hosts would then each lock
/// their own file.
fn empty_url_error(g: &cli::Global, m: &clap::ArgMatches) -> Option<anyhow::Error> {
    use clap::parser::ValueSource::EnvVariable;
    let (id, option, var, give) = if g.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
        ("url", "--url", "DLOCK_URL", "a backend URL")
    } else if g
        .url_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        (
            "url_file",
            "--url-file",
            "DLOCK_URL_FILE",
            "the path of a file holding the URL",
        )
    } else {
        return None;
    };
    let (what, unset) = match m.value_source(id) {
        Some(EnvVariable) => (format!("{var} is set but empty"), format!("unset {var}")),
        _ => (format!("{option} is empty"), format!("leave out {option}")),
    };
    Some(error::fail(
        error::USAGE,
        format!(
            "{what}: give {give}, or {unset} to use the local SQLite file \
             (which excludes only processes on this host)"
        ),
    ))
}

/// clap's usage errors span several lines; an operator reading a cron mail or
/// a CI log wants one. Keep the message and tips, drop the usage block.
fn one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let l = line.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if !l.is_empty() {
            parts.push(l);
        }
    }
    format!("{} (see --help)", parts.join(" "))
}

/// A URL given on the command line beats one from the environment, whichever
/// of --url and --url-file carries it; two from the same place stay a conflict.
fn pick_url_source(g: &mut cli::Global, m: &clap::ArgMatches) {
    use clap::parser::ValueSource::CommandLine;
    if g.url.is_none() || g.url_file.is_none() {
        return;
    }
    match (m.value_source("url"), m.value_source("url_file")) {
        (Some(CommandLine), Some(f)) if f != CommandLine => g.url_file = None,
        (Some(u), Some(CommandLine)) if u != CommandLine => g.url = None,
        _ => {}
    }
}
