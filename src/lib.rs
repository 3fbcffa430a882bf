//! dlock: a distributed mutex for shell scripts, cron jobs and CI pipelines.
//!
//! The library exists so that tools (the docs generator, tests) can reach the
//! clap definition; the binary in main.rs only calls [`main`].

mod backend;
pub mod cli;
mod commands;
pub mod error;
mod guard;
mod holder;
mod lease;
mod names;
mod output;
mod signals;
mod spawn;
mod supervise;

use clap::{CommandFactory, FromArgMatches};

/// Runs dlock with the process's arguments and exits.
pub fn main() -> ! {
    // Before any thread starts, so that every thread inherits the signal mask.
    signals::install();
    let parsed = cli::Cli::command()
        .try_get_matches()
        .and_then(|m| cli::Cli::from_arg_matches(&m).map(|c| (c, m)));
    let mut cli = match parsed {
        Ok((mut c, m)) => {
            pick_url_source(&mut c.global, &m);
            c
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            std::process::exit(error::OK);
        }
        Err(e) => {
            eprintln!("dlock: {}", one_line(&e.render().to_string()));
            std::process::exit(error::USAGE);
        }
    };
    let g = &mut cli.global;
    let url = if g.url.is_some() && g.url_file.is_some() {
        Err(error::fail(
            error::USAGE,
            "both --url and --url-file (or DLOCK_URL and DLOCK_URL_FILE) are set: give one",
        ))
    } else {
        commands::resolve_url(g)
    };
    let g = &cli.global;
    let secrets = url
        .as_ref()
        .ok()
        .and_then(|u| u.as_deref())
        .map(backend::secrets)
        .unwrap_or_default();
    output::init(
        g.quiet,
        g.verbose,
        g.log_format == cli::LogFormat::Json,
        secrets,
    );
    let result = url.and_then(|url| match &cli.command {
        cli::Command::Acquire(a) => commands::acquire(g, url, a),
        cli::Command::Release(r) => commands::release(g, url, r),
        cli::Command::Status(s) => commands::status(g, url, s),
        cli::Command::Exec(e) => commands::exec(g, url, e),
        cli::Command::Renew(r) => commands::renew(g, url, r),
        cli::Command::Keepalive(k) => commands::keepalive(g, url, k),
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            output::error(&format!("error: {e:#}"));
            std::process::exit(error::code_of(&e));
        }
    }
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
