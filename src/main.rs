//! dlock: a distributed mutex for shell scripts, cron jobs and CI pipelines.

mod backend;
mod cli;
mod commands;
mod error;
mod holder;
mod lease;
mod names;
mod output;
mod signals;
mod supervise;

use clap::Parser;

fn main() {
    // Before any thread starts, so that every thread inherits the signal mask.
    signals::install();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                error::USAGE
            } else {
                error::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let g = &cli.global;
    let url = commands::resolve_url(g);
    let secrets = url
        .as_ref()
        .ok()
        .and_then(|u| u.as_deref())
        .map(backend::secrets)
        .unwrap_or_default();
    output::init(g.quiet, g.verbose, secrets);
    let result = url.and_then(|url| match &cli.command {
        cli::Command::Acquire(a) => commands::acquire(g, url, a),
        cli::Command::Release(r) => commands::release(g, url, r),
        cli::Command::Status(s) => commands::status(g, url, s),
        cli::Command::Exec(e) => commands::exec(g, url, e),
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            output::error(&format!("error: {e:#}"));
            std::process::exit(error::code_of(&e));
        }
    }
}
